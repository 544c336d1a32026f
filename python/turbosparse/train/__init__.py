"""Predictor training (ts-train-predictor) and the pipeline that makes the bundled model.

Modules, one job each:
    weights     a dReLU/ReGLU model's weights and shape, from a Hugging Face folder or a GGUF
    forward     a float32 numpy forward pass, one layer at a time over all sequences
    corpus      text files -> token sequences
    record      per-layer predictor inputs and true active masks, streamed to .npy memmaps
    fit         trains one predictor (numpy, or torch when installed) and picks its threshold
    output      writes predictors: a new GGUF, or a Hugging Face predictor folder
    cli         the ts-train-predictor command
    default_model   the reproducible pipeline of the bundled model (needs torch)

Only numpy is needed; torch, when installed, speeds up predictor training (--backend torch).
"""
