"""What a plan will do and cost, before anything is sent (pure; `batchgen plan` prints it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from batchgen.planning.settings import point_label
from batchgen.planning.tasks import Plan
from batchgen.rules import models, modes, pricing

EXAMPLES_PER_REASON = 3
IN_BATCH = "in_batch"   # a status_of answer: held by a Batch API batch not collected yet


def statuses_to_send(retry_failed: bool) -> tuple:
    """The journal statuses of the tasks a run sends (None: no outcome yet): the one rule,
    for `plan` task by task and for the runner over all tasks at once."""
    return (None, "error") if retry_failed else (None,)


def to_send(status: Optional[str], retry_failed: bool) -> bool:
    """Whether a run sends a task whose journal status is `status`."""
    return status in statuses_to_send(retry_failed)


def _add(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a + b


@dataclass
class PointSummary:
    label: str
    tasks: int = 0
    refused: int = 0
    images: int = 0
    cost_usd: Optional[float] = 0.0   # None: some task's price is unknown
    done: int = 0                     # finished by an earlier run (ok or error; refused not counted)
    in_batches: int = 0               # submitted in a batch not collected yet: no run sends them
    to_send: int = 0
    images_to_send: int = 0
    cost_to_send_usd: Optional[float] = 0.0

    def as_json(self) -> dict:
        return {"tasks": self.tasks, "refused": self.refused, "done": self.done,
                "to_send": self.to_send, "images": self.images, "est_cost_usd": _rounded(self.cost_usd),
                "est_cost_to_send_usd": _rounded(self.cost_to_send_usd)}


@dataclass
class PlanSummary:
    points: list
    refused_by_reason: dict = field(default_factory=dict)     # reason -> count
    examples: dict = field(default_factory=dict)              # reason -> [(row_index, prompt)]
    unknown_models: list = field(default_factory=list)
    unpriced_models: list = field(default_factory=list)      # known models without a price
    edits: bool = False
    run_found: bool = False           # the output folder holds a run (of this job, or one it grows)
    folder_simulated: bool = False    # the folder's results were made with --simulate
    not_in_job: int = 0               # finished tasks the folder holds that this job does not ask for
    simulate: bool = False            # this job is to run with --simulate
    rpm: Optional[float] = None      # for the time estimate of str()
    mode: str = "live"
    left_out: list = field(default_factory=list)              # [(point label, why)]: not offered

    def __str__(self) -> str:
        return format_plan(self, self.rpm, self.mode)

    @property
    def tasks(self) -> int:
        return sum(p.tasks for p in self.points)

    @property
    def refused(self) -> int:
        return sum(p.refused for p in self.points)

    @property
    def done(self) -> int:
        return sum(p.done for p in self.points)

    @property
    def in_batches(self) -> int:
        return sum(p.in_batches for p in self.points)

    @property
    def to_send(self) -> int:
        return sum(p.to_send for p in self.points)

    @property
    def cost_usd(self) -> Optional[float]:
        costs = [p.cost_usd for p in self.points]
        return None if any(c is None for c in costs) else sum(costs)

    @property
    def cost_to_send_usd(self) -> Optional[float]:
        costs = [p.cost_to_send_usd for p in self.points]
        return None if any(c is None for c in costs) else sum(costs)

    def as_json(self) -> dict:
        """`batchgen plan --json` (the README lists the keys); `points` by sweep point label."""
        return {"tasks": self.tasks, "refused": self.refused, "done": self.done,
                "in_batches": self.in_batches,
                "to_send": self.to_send, "images": sum(p.images for p in self.points),
                "est_cost_usd": _rounded(self.cost_usd),
                "est_cost_to_send_usd": _rounded(self.cost_to_send_usd),
                "run_found": self.run_found, "folder_simulated": self.folder_simulated,
                "not_in_job": self.not_in_job, "unknown_models": self.unknown_models,
                "left_out": dict(self.left_out),
                "refused_by_reason": self.refused_by_reason,
                "points": {p.label: p.as_json() for p in self.points}}


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


def summarise_plan(plan: Plan, status_of: Optional[Callable[[str], Optional[str]]] = None) -> PlanSummary:
    """Counts and costs per sweep point. `status_of` (task id -> "ok", "error" or None) is what
    the output folder's journal says of each task, when it holds a run (IN_BATCH: held by an
    open batch): without it, every task that is not refused is to send."""
    points = [PointSummary(point_label(p)) for p in plan.points]
    summary = PlanSummary(points, unknown_models=list(plan.unknown_models), run_found=status_of is not None,
                          edits=plan.edit, rpm=plan.config.rpm, mode=plan.config.mode,
                          left_out=[(point_label(p), why) for p, why in plan.left_out],
                          simulate=plan.config.simulate)
    retry_failed = plan.config.retry_failed
    costs: dict = {}   # tasks alike share one params dict: price each once
    prices = pricing.load(plan.config.prices, plan.config.models, plan.config.provider)
    catalog = models.load(plan.config.models)
    default = catalog.default_model(plan.config.provider)
    unpriced = set()
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
            costs[key] = (task.images_expected, prices.estimate(task.params, plan.config.mode))
            if costs[key][1] is None and catalog.rules_for(task.params.get("model"), plan.config.provider) is not None:
                unpriced.add(str(task.params.get("model") or default))
        images, cost = costs[key]
        point.images += images
        point.cost_usd = _add(point.cost_usd, cost)
        status = None if status_of is None else status_of(task.task_id)
        if status == IN_BATCH:
            point.in_batches += 1
        elif to_send(status, retry_failed):
            point.to_send += 1
            point.images_to_send += images
            point.cost_to_send_usd = _add(point.cost_to_send_usd, cost)
        else:
            point.done += 1
    summary.unpriced_models = sorted(unpriced)
    return summary


def format_duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    if minutes < 1:
        return f"{max(1, int(round(seconds)))} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def _money(value: Optional[float]) -> str:
    return "no price" if value is None else f"${value:,.2f}"


def format_plan(summary: PlanSummary, rpm: Optional[float] = None, mode: str = "live") -> str:
    width = max([len(p.label) for p in summary.points] + [11])
    ran = summary.run_found

    def row(label, tasks, refused, images, cost, done, sending, sending_cost) -> str:
        line = f"{label:<{width}}  {tasks:>8,}  {refused:>8,}  {images:>8,}  {_money(cost):>10}"
        return line + (f"  {done:>8,}  {sending:>8,}  {_money(sending_cost):>12}" if ran else "")
    head = f"{'sweep point':<{width}}  {'tasks':>8}  {'refused':>8}  {'images':>8}  {'est. cost':>10}"
    lines = [head + (f"  {'done':>8}  {'to send':>8}  {'cost to send':>12}" if ran else "")]
    for p in summary.points:
        lines.append(row(p.label, p.tasks, p.refused, p.images, p.cost_usd, p.done, p.to_send,
                         p.cost_to_send_usd))
    images = sum(p.images for p in summary.points)
    lines.append(row("total", summary.tasks, summary.refused, images, summary.cost_usd, summary.done,
                     summary.to_send, summary.cost_to_send_usd))
    if ran:
        batched = f"{summary.in_batches:,} in batches not collected yet, " if summary.in_batches else ""
        lines.append(f"the output folder holds a run: {summary.done:,} task(s) of this job done, {batched}"
                     f"{summary.to_send:,} to send, {_money(summary.cost_to_send_usd)} still to spend")
        if summary.not_in_job:
            lines.append(f"it also holds {summary.not_in_job:,} finished task(s) this job does not ask for "
                         "(an earlier job's rows, sweep values or defaults); they stay listed with in_job = False")
        if summary.folder_simulated:
            lines.append("its results are simulated (made with --simulate; placeholder images, nothing charged)"
                         + ("" if summary.simulate else
                            ": a real run there is refused; give the real run another --out"))
    note = modes.get(mode).plan_note
    if note:
        lines.append(note)
    if summary.edits:
        lines.append("edits: the costs leave out the input images' tokens, which the answers' usage counts "
                     "(with input_fidelity=high, often more than the output)")
    if summary.unknown_models:
        lines.append(f"unknown model(s) {', '.join(summary.unknown_models)}: batchgen knows neither their "
                     "rules nor their price (give a price with --prices FILE)")
    if summary.unpriced_models:
        lines.append(f"no price for {', '.join(summary.unpriced_models)} at these settings: give one with "
                     "--prices FILE (see the README's Prices section)")
    if summary.left_out:
        lines.append("left out of the sweep, not offered by the model (no tasks):")
        for label, why in summary.left_out:
            lines.append(f"  {label}: {why}")
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
        images_to_send = sum(p.images_to_send for p in summary.points)
        if summary.to_send:
            lines.append(f"{summary.to_send:,} tasks ({images_to_send:,} images) at {rpm:g}/min: "
                         f"{format_duration(images_to_send / rpm * 60)}")
    return "\n".join(lines)
