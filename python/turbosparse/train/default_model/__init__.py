"""The reproducible pipeline of the bundled default model (needs torch):

    python -m turbosparse.train.default_model --out python/turbosparse/models/default.gguf

See pipeline.py for the steps and PRESETS for the sizes.
"""
