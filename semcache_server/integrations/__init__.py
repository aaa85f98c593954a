"""Drop-in adapters for LLM SDKs, each an optional extra (pip install 'semcache-server[openai]', ...):

- `semcache_server.integrations.openai`: wrap an OpenAI (or AsyncOpenAI) client so that
  chat.completions.create, streamed or not, is served from the cache;
- `semcache_server.integrations.langchain`: a BaseCache for langchain's set_llm_cache;
- `semcache_server.integrations.litellm`: LiteLLM's custom-cache hook.

Each builds the whole key from the request (semcache_server.integrations.chat): the partition
from the model and the leading system messages, the query from the last user message,
the request key from the settings and tools and the earlier turns. A cache that is down
or refuses a request never fails the call: it goes to the model.
"""
