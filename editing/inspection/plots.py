"""Pictures of the Inspect tab: causal-tracing heatmaps (the ROME paper's Figure 1) and the
logit lens per layer (the thesis's Figure 3-1).  Drawing only; computing is elsewhere."""

from __future__ import annotations

from matplotlib.figure import Figure

from editing.inspection.lens import LensResult
from editing.inspection.tracing import TraceResult

TITLES = {"hidden": "residual stream (layer output)", "mlp": "MLP output (window)", "attn": "attention output (window)"}
CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def plot_trace(result: TraceResult, mark_layer: int | None = None) -> Figure:
    kinds = list(result.scores)
    labels = [f"{t!r}*" if result.subject_range[0] <= i < result.subject_range[1] else repr(t)
              for i, t in enumerate(result.tokens)]
    # matplotlib's object API: no pyplot, no backend to choose, no global state
    fig = Figure(figsize=(4.2 * len(kinds), 0.32 * len(labels) + 1.8))
    axes = fig.subplots(1, len(kinds), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        grid = result.scores[kind]
        image = ax.pcolor(grid, cmap=CMAPS.get(kind, "Blues"), vmin=min(result.p_corrupted, grid.min()))
        ax.invert_yaxis()
        ax.set_yticks([i + 0.5 for i in range(len(labels))], labels, fontsize=7)
        step = max(1, len(result.layers) // 8)
        ax.set_xticks([i + 0.5 for i in range(0, len(result.layers), step)], result.layers[::step], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(TITLES.get(kind, kind), fontsize=9)
        if mark_layer is not None:
            ax.axvline(mark_layer + 0.5, color="black", linestyle="--", linewidth=1)
        bar = fig.colorbar(image, ax=ax, fraction=0.05)
        bar.set_label(f"P({result.answer.strip()!r}) restored", fontsize=7)
    fig.suptitle(f"Causal trace of {result.prompt!r}: P_clean = {result.p_clean:.3f}, "
                 f"P_corrupted = {result.p_corrupted:.3f}  (* subject tokens)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_lens(lens: LensResult, mark_layer: int | None = None) -> Figure:
    fig = Figure(figsize=(max(6, 0.3 * len(lens.layers)), 3.4))
    ax = fig.subplots()
    ax.plot(lens.layers, lens.answer_prob, marker="o", label=f"P({lens.answer.strip()!r}) (final answer)")
    if lens.target_prob is not None:
        ax.plot(lens.layers, lens.target_prob, marker="s", label=f"P({lens.target!r}) (target)")
    for layer, token, p in zip(lens.layers, lens.top_tokens, lens.answer_prob):
        ax.annotate(token.strip()[:8] or "␣", (layer, p), textcoords="offset points", xytext=(0, 6),
                    fontsize=6, rotation=60, ha="left")
    if mark_layer is not None:
        ax.axvline(mark_layer, color="black", linestyle="--", linewidth=1, label=f"layer {mark_layer}")
    ax.set_xlabel("layer")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1.1)
    ax.set_title(f"Logit lens of {lens.prompt!r} (labels: top token per layer)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=110)
