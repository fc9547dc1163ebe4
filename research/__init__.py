"""deepgen's library: data, models, objectives, training, evaluations and reports."""
from research import xla_flags

xla_flags.apply()  # before any JAX backend starts: see research/xla_flags.py
