"""deepgen's library: data, models, objectives, training, evaluations and reports."""
from research import errors, host_memory, xla_flags

xla_flags.apply()  # before any JAX backend starts: see research/xla_flags.py
try:
    host_memory.apply()  # freed memory stays in the process: see research/host_memory.py
except ValueError as error:  # a bad DEEPGEN_MALLOC: one FATAL line, status 2, as every command
    errors.exit_with(errors.UserError(str(error)))

from research import threefry  # noqa: E402  (after xla_flags: threefry imports jax)

try:
    threefry.apply()  # jax.random's hash unrolled in CPU inits: see research/threefry.py
except ValueError as error:  # a bad DEEPGEN_THREEFRY: one FATAL line, status 2, as every command
    errors.exit_with(errors.UserError(str(error)))
