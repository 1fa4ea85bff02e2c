"""The training core: DPO with LoRA on a pairs file (`losses`, the LightningModule in `module`, the pairs
DataModule in `pairs`, the run in `core`). It imports neither duckdb, polars, the lake nor the engines, so it
runs on a machine that has only torch, transformers, peft, lightning and pyarrow:

    python -m proxyreward_pl.training pairs.parquet runs/x --model.path MODEL [--config configs/....yaml]
"""
