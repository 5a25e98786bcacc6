"""Test setup: 8 fake CPU devices (set before jax is imported) so sharded code is exercised, and a persistent
XLA compilation cache for the session, so stage tests that train, stop and resume (and so re-jit the same
steps in a new call) compile each program once."""
import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("STYLEX_TEST_JAX_CACHE") or tempfile.mkdtemp(prefix="stylex_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
