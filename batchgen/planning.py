"""What a plan will do and cost, before anything is sent (pure; `batchgen plan` prints it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from . import models
from .job import Plan, point_label

EXAMPLES_PER_REASON = 3


@dataclass
class PointSummary:
    label: str
    tasks: int = 0
    refused: int = 0
    images: int = 0
    cost_usd: Optional[float] = 0.0   # None: some task's price is unknown


@dataclass
class PlanSummary:
    points: list
    refused_by_reason: dict = field(default_factory=dict)     # reason -> count
    examples: dict = field(default_factory=dict)              # reason -> [(row_index, prompt)]
    unknown_models: list = field(default_factory=list)
    rpm: Optional[float] = None      # for the time estimate of str()
    mode: str = "live"

    def __str__(self) -> str:
        return format_plan(self, self.rpm, self.mode)

    @property
    def tasks(self) -> int:
        return sum(p.tasks for p in self.points)

    @property
    def refused(self) -> int:
        return sum(p.refused for p in self.points)

    @property
    def cost_usd(self) -> Optional[float]:
        costs = [p.cost_usd for p in self.points]
        return None if any(c is None for c in costs) else sum(costs)


def summarise_plan(plan: Plan) -> PlanSummary:
    points = [PointSummary(point_label(p)) for p in plan.points]
    summary = PlanSummary(points, unknown_models=list(plan.unknown_models), rpm=plan.config.rpm,
                          mode=plan.config.mode)
    costs: dict = {}   # tasks alike share one params dict: price each once
    for task in plan.tasks:
        point = points[task.point]
        if task.problem:
            point.refused += 1
            summary.refused_by_reason[task.problem] = summary.refused_by_reason.get(task.problem, 0) + 1
            examples = summary.examples.setdefault(task.problem, [])
            if len(examples) < EXAMPLES_PER_REASON:
                examples.append((task.row_index, task.prompt))
            continue
        point.tasks += 1
        key = id(task.params)
        if key not in costs:
            costs[key] = (task.images_expected, models.estimate_cost(task.params, plan.config.mode))
        images, cost = costs[key]
        point.images += images
        if cost is None or point.cost_usd is None:
            point.cost_usd = None
        else:
            point.cost_usd += cost
    return summary


def format_duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    if minutes < 1:
        return f"{max(1, int(round(seconds)))} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def _money(value: Optional[float]) -> str:
    return "unknown" if value is None else f"${value:,.2f}"


def format_plan(summary: PlanSummary, rpm: Optional[float] = None, mode: str = "live") -> str:
    width = max([len(p.label) for p in summary.points] + [11])
    lines = [f"{'sweep point':<{width}}  {'tasks':>8}  {'refused':>8}  {'images':>8}  {'est. cost':>10}"]
    for p in summary.points:
        lines.append(f"{p.label:<{width}}  {p.tasks:>8,}  {p.refused:>8,}  {p.images:>8,}  {_money(p.cost_usd):>10}")
    images = sum(p.images for p in summary.points)
    lines.append(f"{'total':<{width}}  {summary.tasks:>8,}  {summary.refused:>8,}  {images:>8,}  "
                 f"{_money(summary.cost_usd):>10}")
    if mode == "batch":
        lines.append("costs at the Batch API's price: half the live one")
    if summary.unknown_models:
        lines.append(f"cost unknown for model(s) {', '.join(summary.unknown_models)}: batchgen has no price for them")
    if summary.refused_by_reason:
        lines.append("refused before sending (invalid_params):")
        for reason, count in sorted(summary.refused_by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:,} × {reason}")
            for row, prompt in summary.examples.get(reason, ()):
                text = "" if prompt is None else str(prompt)
                text = text if len(text) <= 60 else text[:57] + "..."
                lines.append(f"      row {row}: {text!r}")
    if rpm:
        # A request for n images counts n against the per-minute budget.
        lines.append(f"{summary.tasks:,} tasks ({images:,} images) at {rpm:g}/min: "
                     f"{format_duration(images / rpm * 60)}")
    return "\n".join(lines)
