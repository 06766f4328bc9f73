"""benchmarks/peer_cornac.py: the split handed to cornac, and the curves compared (cornac itself is optional)."""

from benchmarks import peer_cornac
from tiger_jax.data import splits as splits_lib
from tiger_jax.data.types import Sessions


def test_cornac_records_are_tiger_jaxs_leave_one_out_split():
  users, sequences = ["u0", "u1"], [list("ABCDE"), list("CBAD")]
  train, validation = peer_cornac.cornac_records(users, sequences)
  assert train == [("u0", "u0", "A", 0), ("u0", "u0", "B", 1), ("u0", "u0", "C", 2),
                   ("u1", "u1", "C", 0), ("u1", "u1", "B", 1)]
  # cornac's 'last' mode validates each session's last item given the items before it.
  index = {a: i for i, a in enumerate("ABCDE")}
  examples = splits_lib.leave_one_out(Sessions(users, [[index[a] for a in s] for s in sequences]), "validation")
  for u, user in enumerate(users):
    session = [item for (who, _, item, _) in validation if who == user]
    assert index[session[-1]] == examples.target[u]
    assert [index[a] for a in session[:-1]] == list(examples.history[u])


def test_time_to_target_and_the_trainers_curve():
  assert peer_cornac.seconds_to_reach([(10.0, 0.01), (20.0, 0.03), (30.0, 0.02)], 0.025) == 20.0
  assert peer_cornac.seconds_to_reach([(10.0, 0.01)], 0.05) is None
  log = ("2026 INFO tiger_jax.train] eval at step 2000 (1.5s): validation/examples 9 validation/loss 3.1 "
         "validation/ndcg@10 0.0210 validation/recall@10 0.04 | best validation/ndcg@10 0.0210 @ 2000\n"
         "2026 INFO tiger_jax.train] eval at step 4000 (0.9s): validation/ndcg@10 0.0305 | best ...\n")
  assert peer_cornac.tiger_curve(log, ms_per_step=4.0) == [(8.0, 0.021), (16.0, 0.0305)]

