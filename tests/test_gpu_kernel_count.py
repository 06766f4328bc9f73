"""benchmarks.gpu_kernel_count: reading kernels out of compiled HLO, and its error without jax's CUDA plugin."""
import jax
import jax.numpy as jnp
import pytest

from benchmarks import gpu_kernel_count as gkc


def test_kernel_names_group_launches_and_skip_what_launches_nothing():
  lines = {
      "%p = f32[4]{0} parameter(0)": None,
      "%g = f32[4]{0} get-tuple-element(%t), index=0": None,
      "%t = (f32[4]{0}, s32[]) tuple(%a, %b)": None,
      "%w = (s32[], f32[4]{0}) while(%t), condition=%cond, body=%body.3": None,
      "%f = f32[4]{0} fusion(%p), kind=kInput, calls=%fused_reduce.12, metadata={op_name=\"x\"}": "fusion:fused_reduce",
      "%r = f32[4]{0} fusion(%p), kind=kLoop, calls=%fused_select_computation.7.clone": "fusion:fused_select",
      "%c = (f32[8,8]{1,0}, s8[0]{0}) custom-call(%a, %b), custom_call_target=\"__cublas$lt$matmul\"":
          "custom-call:__cublas$lt$matmul",
      "%k = f32[4]{0} copy(%p)": "copy",
  }
  for line, expected in lines.items():
    assert gkc.kernel_name(line) == expected, line


def test_the_loop_body_of_a_compiled_program_is_counted():
  def loop(x):
    return jax.lax.fori_loop(0, 3, lambda i, v: jnp.sin(v) @ v + i, x)
  hlo = jax.jit(loop).lower(jnp.ones((4, 4))).compile().as_text()
  kernels = gkc.loop_kernels(hlo)
  assert sum(kernels.values()) >= 1
  assert all(kind.split(":")[0] not in gkc.NOT_KERNELS for kind in kernels)
  straight = jax.jit(lambda x: jnp.sin(x) @ x).lower(jnp.ones((4, 4))).compile().as_text()
  with pytest.raises(ValueError, match="no loop"):
    gkc.loop_kernels(straight)


def test_without_the_cuda_plugin_the_error_names_the_target_and_the_install(tmp_path):
  try:
    import jax_plugins.xla_cuda12  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("jax's CUDA plugin is installed here")
  except ImportError:
    pass
  with pytest.raises(SystemExit, match=r"(?s)h200\.txtpb.*jax\[cuda12\]"):
    gkc.compile_only_device("h200")
