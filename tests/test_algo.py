"""Unit tests of the pure-torch algorithm module, against values worked out by hand (CPU, fast)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from retro_ray.algo import (
    ADVANTAGE_ESTIMATORS,
    PolicyLossConfig,
    ReflectionBatch,
    aggregate,
    compute_advantages,
    dp_normalizer,
    entropy_from_logits,
    get_advantage_estimator,
    get_policy_loss,
    kl_penalty,
    masked_mean,
    masked_sum,
    normalizer_count,
    policy_loss,
    reflection_rewards,
    register_advantage_estimator,
    sequence_logprobs,
    token_logprobs,
)

# ----------------------------------------------------------------------------- rewards


def test_reflection_rewards_is_next_return_minus_current() -> None:
    r = reflection_rewards([0.0, 0.0, 0.5, 0.8], [1.0, 0.0, 0.25, 1.0])
    torch.testing.assert_close(r, torch.tensor([1.0, 0.0, -0.25, 0.2]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        reflection_rewards([0.0, 1.0], [1.0])


def test_leave_one_out_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    adv, stats = compute_advantages("leave_one_out", rewards, torch.zeros(4, dtype=torch.long))
    # each minus the mean of the other three: 1 - 1/3, 0 - 2/3, 0 - 2/3, 1 - 1/3
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    assert stats["num_groups"] == 1.0
    assert stats["zero_signal_group_share"] == 0.0


def test_group_mean_by_hand() -> None:
    adv, _ = compute_advantages(
        "group_mean", torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long)
    )
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))


@pytest.mark.parametrize("name", ["group_mean", "leave_one_out"])
def test_std_normalisation_uses_population_std_plus_eps(name: str) -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    ids = torch.zeros(4, dtype=torch.long)
    raw, _ = compute_advantages(name, rewards, ids)
    eps = 0.1
    adv, _ = compute_advantages(name, rewards, ids, normalize_std=True, eps=eps)
    # population std of [1, 0, 0, 1] is 0.5
    torch.testing.assert_close(adv, raw / (0.5 + eps))


def test_all_equal_groups_give_zero_and_count_as_zero_signal() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.3, 0.3, 0.7])
    ids = torch.tensor([7, 7, 7, 2, 2, 5, 5, 5])
    for name in ("leave_one_out", "group_mean"):
        adv, stats = compute_advantages(name, rewards, ids, normalize_std=True)
        torch.testing.assert_close(adv[:5], torch.zeros(5))
        assert adv[5:].abs().sum() > 0
        assert stats["zero_signal_group_share"] == pytest.approx(2 / 3)


def test_float_roundoff_counts_as_equal() -> None:
    rewards = reflection_rewards([0.3, 0.4], [0.6, 0.7])  # float32: 0.3 and 0.3 + 3e-8
    assert rewards[0] != rewards[1]
    adv, stats = compute_advantages(
        "leave_one_out", rewards, torch.tensor([0, 0]), normalize_std=True
    )
    assert adv.abs().max().item() == 0.0
    assert stats["zero_signal_group_share"] == 1.0


def test_mixed_group_sizes_and_singletons() -> None:
    # groups (ids not contiguous): {3: [1, 0]}, {9: [2]}, {4: [0, 0, 3]}
    rewards = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 3.0])
    ids = torch.tensor([3, 9, 3, 4, 4, 4])
    loo, stats = compute_advantages("leave_one_out", rewards, ids)
    torch.testing.assert_close(loo, torch.tensor([1.0, 0.0, -1.0, -1.5, -1.5, 3.0]))
    gm, _ = compute_advantages("group_mean", rewards, ids)
    torch.testing.assert_close(gm, torch.tensor([0.5, 0.0, -0.5, -1.0, -1.0, 2.0]))
    assert stats["num_groups"] == 3.0
    assert stats["zero_signal_group_share"] == pytest.approx(1 / 3)  # the singleton
    # leave-one-out = m / (m - 1) * group-mean advantage, per group
    torch.testing.assert_close(loo[[3, 4, 5]], 1.5 * gm[[3, 4, 5]])


def test_advantage_registry() -> None:
    assert {"leave_one_out", "group_mean"} <= set(ADVANTAGE_ESTIMATORS)
    with pytest.raises(KeyError, match=r"group_mean.*leave_one_out"):
        get_advantage_estimator("gae")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("group_mean")(ADVANTAGE_ESTIMATORS["group_mean"])
    with pytest.raises(ValueError, match="integer"):
        compute_advantages("group_mean", torch.ones(2), torch.zeros(2))


# ----------------------------------------------------------------------------- log-probs


def test_token_logprobs_matches_manual_softmax() -> None:
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])  # (1, 2, 3)
    targets = torch.tensor([[2, 1]])
    lp = token_logprobs(logits, targets)
    z = math.exp(1) + math.exp(2) + math.exp(3)
    torch.testing.assert_close(lp, torch.tensor([[math.log(math.exp(3) / z), math.log(1 / 3)]]))
    # masked positions give 0 and may hold padding ids such as -100
    lp_masked = token_logprobs(logits, torch.tensor([[2, -100]]), torch.tensor([[1, 0]]))
    torch.testing.assert_close(lp_masked, torch.tensor([[lp[0, 0].item(), 0.0]]))


def test_token_logprobs_bf16_rows_match_float32() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    targets = torch.randint(0, 11, (3, 5))
    expected = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, targets[..., None])[
        ..., 0
    ]
    got = token_logprobs(logits.bfloat16(), targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_sequence_logprobs_shift() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    ids = torch.randint(0, 6, (2, 4))
    lp = sequence_logprobs(logits, ids)
    assert lp.shape == (2, 4) and torch.all(lp[:, 0] == 0)
    torch.testing.assert_close(
        lp[:, 1:], torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    )


def test_entropy_from_logits() -> None:
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[math.log(4), 0.0]]))
    p = torch.softmax(torch.tensor([1.0, 2.0, 0.5]), -1)
    h = entropy_from_logits(torch.tensor([[[1.0, 2.0, 0.5]]]))
    torch.testing.assert_close(h, -(p * p.log()).sum().reshape(1, 1))


def test_masked_sum_and_mean() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_sum(x, m).item() == 3.0
    assert masked_mean(x, m).item() == 1.5
    torch.testing.assert_close(masked_mean(x, m, dim=-1), torch.tensor([1.5, 0.0]))


# ----------------------------------------------------------------------------- KL


def test_kl_kinds() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([0.5, -1.0, 0.0]))
    d = ref - logp
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), d.exp() - d - 1)
    torch.testing.assert_close(kl_penalty(logp, ref, "mse"), 0.5 * (logp - ref) ** 2)
    torch.testing.assert_close(kl_penalty(logp, ref, "abs"), torch.tensor([0.5, 1.0, 0.0]))
    with pytest.raises(KeyError, match=r"k1.*k3"):
        kl_penalty(logp, ref, "k4")


def test_k3_nonnegative_and_zero_when_equal() -> None:
    torch.manual_seed(0)
    logp, ref = -torch.rand(1000) * 5, -torch.rand(1000) * 5
    assert torch.all(kl_penalty(logp, ref, "k3") >= 0)
    assert torch.all(kl_penalty(logp, logp, "k3") == 0)


# ----------------------------------------------------------------------------- policy losses


def _token_grad(
    name: str, logp0: float, old: float, adv: float, **cfg: float
) -> tuple[float, float]:
    logp = torch.tensor([[logp0]], requires_grad=True)
    loss_tok, _ = get_policy_loss(name)(
        logp,
        torch.tensor([[adv]]),
        old_logprobs=torch.tensor([[old]]),
        config=PolicyLossConfig(**cfg),
    )
    loss_tok.sum().backward()
    assert logp.grad is not None
    return loss_tok.item(), logp.grad.item()


def test_reinforce_gradient_is_minus_advantage() -> None:
    for adv in (2.0, -0.5):
        loss, grad = _token_grad("reinforce", -1.3, 0.0, adv)
        assert loss == pytest.approx(-adv * -1.3)
        assert grad == pytest.approx(-adv)  # -A * d logp / d logp


@pytest.mark.parametrize(
    ("log_ratio", "adv", "clipped"),
    [
        (math.log(1.5), 1.0, True),  # ratio above 1 + eps, A > 0: clipped, no gradient
        (math.log(1.5), -1.0, False),  # ratio above 1 + eps, A < 0: unclipped (pessimistic)
        (math.log(0.5), -1.0, True),  # ratio below 1 - eps, A < 0: clipped
        (math.log(0.5), 1.0, False),  # ratio below 1 - eps, A > 0: unclipped
        (math.log(1.1), 1.0, False),  # inside the trust region
    ],
)
def test_ppo_clip_branches(log_ratio: float, adv: float, clipped: bool) -> None:
    old = -2.0
    loss, grad = _token_grad(
        "ppo_clip", old + log_ratio, old, adv, clip_eps_low=0.2, clip_eps_high=0.2
    )
    ratio = math.exp(log_ratio)
    if clipped:
        assert loss == pytest.approx(-min(max(ratio, 0.8), 1.2) * adv)
        assert grad == 0.0
    else:
        assert loss == pytest.approx(-ratio * adv)
        assert grad == pytest.approx(-adv * ratio)  # d(-A rho)/d logp = -A rho


def test_ppo_clip_at_ratio_one_equals_reinforce_gradient() -> None:
    _, g_ppo = _token_grad("ppo_clip", -0.7, -0.7, 1.7)
    _, g_rf = _token_grad("reinforce", -0.7, -0.7, 1.7)
    assert g_ppo == pytest.approx(g_rf)


def test_ppo_clip_asymmetric_and_metrics() -> None:
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.25, 1.25, 0.9, 1.0]]))
    adv = torch.ones(1)
    cfg = PolicyLossConfig(name="ppo_clip", clip_eps_low=0.2, clip_eps_high=0.28)
    mask = torch.tensor([[1, 1, 1, 0]])
    _, metrics = policy_loss(logp, adv, mask, old_logprobs=old, config=cfg)
    assert metrics["clip_frac"] == 0.0  # 1.25 < 1.28: inside the raised upper bound
    _, metrics = policy_loss(logp, adv, mask, old_logprobs=old, config=PolicyLossConfig())
    assert metrics["clip_frac"] == pytest.approx(2 / 3)
    expected_kl = sum(r - 1 - math.log(r) for r in (1.25, 1.25, 0.9)) / 3
    assert metrics["approx_kl_old"] == pytest.approx(expected_kl, rel=1e-5)
    with pytest.raises(ValueError, match="rwr"):
        policy_loss(logp, adv, mask, config=cfg)


def test_rwr_weights() -> None:
    _, grad = _token_grad("rwr", -1.0, 0.0, 1.0)
    assert grad == pytest.approx(-math.e)
    _, grad = _token_grad("rwr", -1.0, 0.0, -2.0)
    assert grad == pytest.approx(-math.exp(-2.0))  # non-negative weight: still a likelihood
    _, grad = _token_grad("rwr", -1.0, 0.0, 10.0, rwr_max_weight=5.0)
    assert grad == pytest.approx(-5.0)
    _, grad = _token_grad("rwr", -1.0, 0.0, -2.0, rwr_weight="advantage")  # type: ignore[arg-type]
    assert grad == pytest.approx(2.0)


def test_policy_loss_combines_pg_kl_entropy() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, -1.0]])
    ent = torch.tensor([[0.5, 1.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    cfg = PolicyLossConfig(name="reinforce", kl_kind="k1", kl_coef=0.1, entropy_coef=0.01)
    loss, metrics = policy_loss(
        logp, torch.tensor([2.0]), mask, ref_logprobs=ref, entropy=ent, config=cfg
    )
    pg = (2.0 * 1.0 + 2.0 * 2.0) / 2
    kl = (0.5 + 0.0) / 2
    h = (0.5 + 1.0) / 2
    assert loss.item() == pytest.approx(pg + 0.1 * kl - 0.01 * h)
    assert metrics["pg_loss"] == pytest.approx(pg)
    assert metrics["kl_ref"] == pytest.approx(kl)
    assert metrics["entropy"] == pytest.approx(h)
    loss.backward()
    assert logp.grad is not None and ent.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[(-2.0 + 0.1) / 2, (-2.0 + 0.1) / 2, 0.0]]))
    torch.testing.assert_close(ent.grad, torch.tensor([[-0.005, -0.005, 0.0]]))
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, torch.tensor([2.0]), mask, config=cfg)


def test_policy_loss_registry_error() -> None:
    with pytest.raises(KeyError, match=r"ppo_clip.*reinforce.*rwr"):
        get_policy_loss("dpo")


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_modes_by_hand() -> None:
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert aggregate(loss, mask, "token_sum_norm").item() == pytest.approx(10 / 4)
    assert aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(loss, mask, "seq_mean_token_sum").item() == pytest.approx(10 / 3)
    assert aggregate(loss, mask, "token_sum_norm", normalizer=100.0).item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="token_sum_norm"):
        aggregate(loss, mask, "mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["token_sum_norm", "seq_mean_token_mean", "seq_mean_token_sum"])
@pytest.mark.parametrize("grad_reduction", ["sum", "mean"])
def test_split_across_workers_with_global_normaliser_equals_single_batch(
    mode: str, grad_reduction: str
) -> None:
    """The property the distributed learner relies on: W workers make the one-worker update."""
    torch.manual_seed(0)
    b, t, v = 6, 7, 5
    weight = torch.randn(v, v)
    ids = torch.randint(0, v, (b, t))
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, (start, stop) in enumerate([(1, 7), (2, 3), (4, 7), (1, 2), (3, 7), (5, 6)]):
        mask[i, start:stop] = 1  # very different token counts per row
    adv = torch.randn(b)
    old = torch.randn(b, t).clamp(-3, 0)
    cfg = PolicyLossConfig(name="ppo_clip", agg_mode=mode, kl_coef=0.0)  # type: ignore[arg-type]

    def grad_of(rows: slice, normalizer: float | None) -> torch.Tensor:
        w = weight.clone().requires_grad_(True)
        logits = torch.nn.functional.one_hot(ids[rows], v).float() @ w  # (b', t, v)
        logp = sequence_logprobs(logits, ids[rows], mask[rows])
        loss, _ = policy_loss(
            logp, adv[rows], mask[rows], old_logprobs=old[rows], config=cfg, normalizer=normalizer
        )
        loss.backward()
        assert w.grad is not None
        return w.grad

    single = grad_of(slice(0, b), None)
    pieces = [slice(0, 2), slice(2, 6)]  # uneven split: 2 workers, different token counts
    global_count = sum(normalizer_count(mask[p], mode).item() for p in pieces)  # all-reduce SUM
    world = len(pieces)
    z = dp_normalizer(global_count, world, grad_reduction)  # type: ignore[arg-type]
    grads = [grad_of(p, z) for p in pieces]
    combined = sum(grads) if grad_reduction == "sum" else sum(grads) / world  # DDP averages
    torch.testing.assert_close(combined, single)
    # the naive per-worker mean does not give the single-batch update
    naive = sum(grad_of(p, None) for p in pieces) / world
    assert not torch.allclose(naive, single)


# ----------------------------------------------------------------------------- batch


def _batch() -> ReflectionBatch:
    return ReflectionBatch.from_token_lists(
        prompt_ids=[[5, 6], [7], [8, 9, 10]],
        reflection_ids=[[1, 2, 3], [4], [11, 12]],
        advantages=[0.5, -0.5, 1.0],
        group_ids=[0, 0, 1],
        pad_id=0,
        rewards=[1.0, 0.0, 1.0],
        old_logprobs=[[-0.1, -0.2, -0.3], [-0.4], [-0.5, -0.6]],
    )


def test_batch_collate() -> None:
    batch = _batch()
    assert batch.input_ids.tolist() == [[5, 6, 1, 2, 3], [7, 4, 0, 0, 0], [8, 9, 10, 11, 12]]
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert batch.attention_mask.tolist() == [[1] * 5, [1, 1, 0, 0, 0], [1] * 5]
    assert batch.old_logprobs is not None
    torch.testing.assert_close(batch.old_logprobs[2], torch.tensor([0.0, 0.0, 0.0, -0.5, -0.6]))
    assert batch.num_loss_tokens == 6


def test_batch_check_shapes_errors() -> None:
    batch = _batch()
    with pytest.raises(ValueError, match=r"advantages must be \(B,\)"):
        ReflectionBatch(**{**batch.__dict__, "advantages": torch.zeros(2)}).check_shapes()
    with pytest.raises(ValueError, match=r"old_logprobs must be \(B, T\)"):
        ReflectionBatch(**{**batch.__dict__, "old_logprobs": torch.zeros(3, 4)}).check_shapes()
    bad_mask = batch.loss_mask.clone()
    bad_mask[0, 0] = 1
    with pytest.raises(ValueError, match="column 0"):
        ReflectionBatch(**{**batch.__dict__, "loss_mask": bad_mask}).check_shapes()
    with pytest.raises(ValueError, match="padding"):
        bad = batch.loss_mask.clone()
        bad[1, 3] = 1
        ReflectionBatch(**{**batch.__dict__, "loss_mask": bad}).check_shapes()


def test_batch_split() -> None:
    batch = _batch()
    parts = batch.split(2)
    assert [p.batch_size for p in parts] == [2, 1]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), batch.input_ids)
    assert parts[1].ref_logprobs is None and parts[1].group_ids.tolist() == [1]
    for p in parts:
        p.check_shapes()
    with pytest.raises(ValueError, match="cannot split"):
        batch.split(4)


# ----------------------------------------------------------------------------- import hygiene


def test_algo_imports_with_heavy_packages_blocked() -> None:
    code = textwrap.dedent(
        """
        import sys
        from importlib.abc import MetaPathFinder

        BLOCKED = {"ray", "vllm", "transformers", "peft"}

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked import: {name}")
                return None

        sys.meta_path.insert(0, Block())
        try:
            import ray  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker does not work")
        import retro_ray.algo
        import retro_ray.algo.batch, retro_ray.algo.losses, retro_ray.algo.rewards
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_masked_reductions_ignore_nan_outside_mask() -> None:
    x = torch.tensor([[1.0, float("nan"), float("-inf")]], requires_grad=True)
    m = torch.tensor([[1, 0, 0]])
    assert masked_mean(x, m).item() == 1.0
    aggregate(x, m).backward()
    assert x.grad is not None and x.grad.tolist() == [[1.0, 0.0, 0.0]]


def test_the_package_names_resolve_to_their_modules_definitions() -> None:
    """``retro_ray.algo`` loads its modules on first use: each public name is the object its
    module defines, whatever was loaded first, and the loss settings are the config's."""
    import importlib

    import retro_ray.algo as algo
    from retro_ray import config

    importlib.import_module("retro_ray.algo.losses")  # loads aggregation as a submodule first
    assert set(algo.__all__) == set(algo._MODULE_OF)
    for name, module in algo._MODULE_OF.items():
        defined = getattr(importlib.import_module(f"retro_ray.algo.{module}"), name)
        assert getattr(algo, name) is defined, name
    assert algo.PolicyLossConfig is config.PolicyLossConfig and algo.AggMode is config.AggMode
