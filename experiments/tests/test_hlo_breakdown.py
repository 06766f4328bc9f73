"""experiments/hlo_breakdown.py: fusions sorted by phase and kind of work."""
from experiments import hlo_breakdown


def _line(kind, op_name):
  return (f'  %f = bf16[8,8]{{1,0}} fusion(%a, %b), kind={kind}, calls=%fused_1, '
          f'metadata={{op_name="{op_name}" source_file="x.py"}}')


def test_phases_and_categories():
  enc = "jit(multi_step)/while/body/jvp(Transformer)/Transformer.encode/encoder/layers_0"
  lines = [
      _line("kCustom", enc + "/attention/query/dot_general"),
      _line("kLoop", enc + "/attention/query/convert_element_type"),
      _line("kLoop", enc + "/Dropout_0/jit(_bernoulli)/jit(_uniform)/rng_bit_generator"),
      _line("kInput", enc + "/pre_attention_layer_norm/reduce_sum"),
      _line("kCustom", "jit(multi_step)/while/body/transpose(jvp(Transformer))/Transformer.encode/x/dot_general"),
      _line("kCustom", "jit(multi_step)/while/body/reduce_sum"),
      _line("kLoop", "jit(multi_step)/while/body/add"),
      "  %p = f32[8] parameter(0)",
      "  %c = f32[8] fusion(%p), kind=kLoop",  # no calls=: not an instruction that launches a fusion here
  ]
  table = hlo_breakdown.breakdown(lines)
  assert table["forward"] == {"gemm": 1, "dropout": 1, "cast": 1, "layer_norm": 1, "softmax": 0, "reduce": 0,
                              "other": 0}
  assert table["backward"]["gemm"] == 1 and sum(table["backward"].values()) == 1
  assert table["outside"]["reduce"] == 1 and table["outside"]["other"] == 1 and table["outside"]["gemm"] == 0
  assert "total" in hlo_breakdown.format_table(table).splitlines()[-1]
