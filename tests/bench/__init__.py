"""Tests of the benchmark scripts' pure parts (bench/); none needs a peer's venv."""
