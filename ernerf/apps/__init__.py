"""The applications: train orchestration, inference, evaluation and the demo, in a layer above the components.

They import the components (`ernerf.*`, `datamodules`, `callbacks`); no component imports them, and the entry scripts
(`train.py`, `infer.py`, `evaluate.py`) only parse the command line and call into them.
"""
