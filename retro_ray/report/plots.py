"""The report's figures: one function per PNG, drawn with matplotlib's Agg backend.

matplotlib is imported inside ``_figure`` (not at module import), and figures are built on
``matplotlib.figure.Figure`` with an Agg canvas rather than through ``pyplot``: no global state,
no display needed, safe next to other users of matplotlib in the same process. Every function
takes the plain values computed by ``retro_ray.report.data`` (or ``training_stats``, ``curve``)
and writes one PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retro_ray.report.data import base_agent, decoding
from retro_ray.report.text import label, tokens

DPI = 110
AGENT_STYLE = {
    "react": ("#7f7f7f", "-", "o"),
    "reflexion": ("#1f77b4", "-", "s"),
    "retroformer": ("#d62728", "-", "D"),
    "rl-ppo": ("#ff7f0e", "-", "P"),
    "trajectory-oracle": ("#2ca02c", "--", "^"),
    "ground-truth-oracle": ("#9467bd", ":", "v"),
}


DECODING_LINE = {"greedy": "-", "sampled": "--"}


def _style(agent: str, index: int) -> tuple[str, str, str]:
    """An agent's colour and marker; its decodings (``reflexion-greedy``, ``-sampled``) share
    them and differ in line style."""
    color, line, marker = AGENT_STYLE.get(base_agent(agent), (f"C{(index + 5) % 10}", "-.", "x"))
    variant = decoding(agent)
    if variant:
        line = DECODING_LINE.get(variant, ":")
    return color, line, marker


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs: Any):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def success_by_trial(success: dict[str, dict[str, Any]], path: Path) -> Path:
    """Cumulative success (% of tasks) after each trial, one line per agent: the mean over seeds,
    error bars one standard deviation over seeds."""
    fig, axes = _figure(6.4, 4.2)
    ax = axes[0, 0]
    n = max(len(s["mean"]) for s in success.values())
    for i, (agent, s) in enumerate(success.items()):
        color, line, marker = _style(agent, i)
        x = [k + 1 + (i - (len(success) - 1) / 2) * 0.03 for k in range(len(s["mean"]))]
        seeds = len(s["seeds"])
        ax.errorbar(
            x,
            [100 * v for v in s["mean"]],
            yerr=[100 * v for v in s["std"]],
            color=color,
            linestyle=line,
            marker=marker,
            capsize=3,
            label=f"{label(agent)} ({seeds} seed{'s' if seeds != 1 else ''})",
        )
    ax.set_xticks(range(1, n + 1))
    ax.set_xlim(0.7, n + 0.3)
    ax.set_ylim(0, 105)
    ax.set_xlabel("trial")
    ax.set_ylabel("cumulative success (% of tasks)")
    ax.set_title("Success by trial (mean over seeds; bars: ±1 std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def reflection_reward(reward: list[dict[str, Any]], path: Path) -> Path:
    """Top: mean reflection reward per training iteration with a ±1 standard-error band.
    Bottom: the share of reflections with a positive (and a negative) reward."""
    fig, axes = _figure(6.4, 5.2, rows=2, sharex=True, height_ratios=(3, 2))
    top, bottom = axes[0, 0], axes[1, 0]
    x = [r["iteration"] for r in reward]
    means = [r["mean"] for r in reward]
    top.fill_between(
        x,
        [m - r["sem"] for m, r in zip(means, reward, strict=True)],
        [m + r["sem"] for m, r in zip(means, reward, strict=True)],
        color="#d62728",
        alpha=0.2,
        label="±1 standard error",
    )
    top.plot(x, means, color="#d62728", marker="o", label="mean reward G(k+1) − G(k)")
    top.axhline(0, color="black", linewidth=0.8)
    top.set_ylabel("reflection reward")
    top.set_title("Reflection reward over training (rows played with a reflection)", fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="best")
    bottom.plot(
        x, [100 * r["positive_share"] for r in reward], color="#2ca02c", marker="o", label="> 0"
    )
    if any(r["negative_share"] > 0 for r in reward):
        bottom.plot(
            x, [100 * r["negative_share"] for r in reward], color="#7f7f7f", marker="v", label="< 0"
        )
    bottom.set_ylim(-3, 103)
    bottom.set_ylabel("% of reflections")
    bottom.set_xlabel("training iteration")
    bottom.grid(alpha=0.3)
    bottom.legend(title="reward", fontsize=8, title_fontsize=8, loc="best")
    if len(x) <= 30:
        bottom.set_xticks(x)
    return _save(fig, path)


def throughput(tp: dict[str, Any], seconds: list[dict[str, Any]], path: Path) -> Path:
    """Top (from the training log): episodes and trials finished per minute over wall time.
    Bottom (from ``metrics.jsonl``): seconds per iteration, collection vs the rest."""
    panels = [
        p for p, present in (("rate", bool(tp.get("minutes"))), ("iter", bool(seconds))) if present
    ]
    fig, axes = _figure(6.4, 2.9 * len(panels) + 0.4, rows=len(panels))
    row = 0
    if "rate" in panels:
        ax = axes[row, 0]
        row += 1
        width = tp["bin_s"] / 60.0
        edges = [*tp["minutes"], tp["minutes"][-1] + width]
        trials, episodes = tp["mean_trials_per_min"], tp["mean_episodes_per_min"]
        ax.stairs(tp["trials_per_min"], edges, baseline=None, color="#1f77b4", label="trials")
        ax.stairs(tp["episodes_per_min"], edges, baseline=None, color="#d62728", label="episodes")
        ax.axhline(trials, color="#1f77b4", linestyle=":", label=f"trials, mean {trials:,.1f}")
        ax.axhline(
            episodes, color="#d62728", linestyle=":", label=f"episodes, mean {episodes:,.1f}"
        )
        ax.set_xlim(0, edges[-1])
        ax.set_ylim(0, 1.25 * max([*tp["trials_per_min"], *tp["episodes_per_min"], 1.0]))
        ax.set_xlabel("wall time since the first episode started (min)")
        ax.set_ylabel("finished per minute")
        ax.set_title(f"Training throughput ({tp['bin_s']:g} s bins)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", ncols=2)
    if "iter" in panels:
        ax = axes[row, 0]
        x = [r["iteration"] for r in seconds]
        collect = [r["collect_s"] for r in seconds]
        ax.bar(x, collect, color="#1f77b4", label="collect")
        ax.bar(
            x,
            [r["other_s"] for r in seconds],
            bottom=collect,
            color="#ff7f0e",
            label="rest: batch, learn, publish",
        )
        ax.set_xlabel("training iteration")
        ax.set_ylabel("seconds")
        ax.set_title("Seconds per iteration (metrics.jsonl)", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="best")
        if len(x) <= 30:
            ax.set_xticks(x)
    return _save(fig, path)


def cost(
    per_task: dict[str, dict[str, float]],
    comparison: dict[str, dict[str, Any]],
    baseline: str,
    path: Path,
) -> Path:
    """Left: mean tokens per task by agent (actor prompt, actor completion and reflector tokens
    stacked). Right: extra actor and reflector tokens per point of success gained over the
    baseline ("no gain" where the agent does not beat it)."""
    fig, axes = _figure(9.0, 4.0, cols=2 if comparison else 1)
    ax = axes[0, 0]
    agents = list(per_task)
    names = [label(a) for a in agents]
    prompt = [per_task[a]["actor_prompt"] for a in agents]
    completion = [per_task[a]["actor_completion"] for a in agents]
    actor = [per_task[a]["actor"] for a in agents]
    reflector = [per_task[a]["reflection"] for a in agents]
    total = [x + y for x, y in zip(actor, reflector, strict=True)]
    ax.bar(names, prompt, color="#1f77b4", label="actor prompt")
    ax.bar(names, completion, bottom=prompt, color="#ff7f0e", label="actor completion")
    ax.bar(names, reflector, bottom=actor, color="#2ca02c", label="reflector")
    for i, value in enumerate(total):
        ax.annotate(f"{value:,.0f}", (i, value), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("tokens per task (all trials)")
    ax.set_title("Actor and reflector tokens per task", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    for tick in ax.get_xticklabels():
        tick.set(rotation=20, horizontalalignment="right", rotation_mode="anchor")
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylim(0, 1.3 * max([*total, 1.0]))
    ax.legend(fontsize=8, loc="upper left", ncols=3)
    if comparison:
        ax = axes[0, 1]
        agents = list(comparison)
        values = [comparison[a]["tokens_per_point"] for a in agents]
        heights = [max(v, 0.0) if v is not None else 0.0 for v in values]
        colors = [_style(a, i)[0] for i, a in enumerate(agents)]
        ax.bar([label(a) for a in agents], heights, color=colors)
        for i, (a, v) in enumerate(zip(agents, values, strict=True)):
            c = comparison[a]
            if v is None:
                text = f"no gain ({c['gain_points']:+.1f} pts)"
            elif v <= 0:
                text = f"fewer tokens than {label(baseline)}\n({c['gain_points']:+.1f} pts)"
            else:
                text = f"{tokens(v)} tokens/pt\n({c['gain_points']:+.1f} pts)"
            ax.annotate(text, (i, max(heights[i], 0.0)), ha="center", va="bottom", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("extra actor + reflector tokens per task, per point")
        ax.set_title(
            f"Tokens per point of success gained vs {label(baseline)}\n"
            "(last trial; 1 point = 1 % of tasks)",
            fontsize=10,
        )
        ax.grid(alpha=0.3, axis="y")
        ax.margins(y=0.2)
        if not any(v is not None for v in values):
            ax.set_ylim(-1, 1)
    return _save(fig, path)


def learning_curve(curves: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """Test success at the last trial against the environment episodes consumed in training,
    one line per agent (``retro_ray.report.curve``)."""
    fig, axes = _figure(6.4, 4.2)
    ax = axes[0, 0]
    for i, (agent, points) in enumerate(curves.items()):
        color, line, marker = _style(agent, i)
        ax.plot(
            [p["episodes"] for p in points],
            [100 * p["success"] for p in points],
            color=color,
            linestyle=line,
            marker=marker,
            label=label(agent),
        )
    ax.set_ylim(0, 105)
    ax.set_xlabel("environment episodes consumed in training")
    ax.set_ylabel("test success by the last trial (% of tasks)")
    ax.set_title("Learning curves (each agent at its better decoding)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
