"""How ``dpo-teach frontier --dry-run`` prints its report: the stages as measured, then the GPU bill.

Every figure is labelled where it is printed: measured here (wall time, peak memory, counted FLOPs, disk of each
stage), extrapolated (PPO at full depth when it ran at fewer layers, GPU hours, fits on a GPU), or derived
(``dpo_teach.frontier.bill`` states each rule).
"""

from __future__ import annotations

GIB = 2**30


def _number(value: float, width: int) -> str:
    """``value`` right-aligned in ``width``: one decimal from 1 up, three significant digits below (tiny presets)."""
    return f"{value:{width},.1f}" if value >= 1 or value == 0 else f"{value:{width}.3g}"


def _what_ran(label: str, stage: dict, plan: dict) -> str:
    """What a dry-run stage did, in words, from the plan."""
    sft, dpo, rm, ppo = plan["sft"], plan["dpo"], plan["reward_model"], plan["ppo"]
    if label.startswith("ppo"):
        layers = stage.get("layers", plan["policy_layers"])
        extrapolated = stage.get("extrapolated_from_layers")
        where = f"{layers} of {plan['policy_layers']} layers"
        where = f"extrapolated from {extrapolated} layers" if extrapolated else where
        return (f"{ppo['steps']} PPO-RM step(s): {ppo['rollouts']} rollouts x {plan['max_new_tokens']} tokens, "
                f"{ppo['epochs']} epochs x {ppo['minibatches']} minibatches; {where}")  # fmt: skip
    return {
        "stand-ins": "the Hub models, tokenizer and IMDb stand-ins built here (not priced)",
        "sft": f"{sft['steps']} step(s) of {sft['rows']} reviews x {sft['max_length']} tokens, {sft['micro_batches']} "
        "micro-batches",
        "pairs": f"{plan['pair_prompts']} prompts x {plan['samples_per_prompt']} samples x {plan['max_new_tokens']} "
        "tokens, scored",
        "reward-model": f"{len(stage.get('steps', []))} step(s) of {rm['pairs']} pairs, {rm['micro_batches']} "
        "micro-batches",
        "dpo": f"reference log-probs of {stage.get('reference_pairs')} pairs; {len(stage.get('steps', []))} step(s) of "
        f"{dpo['pairs']} pairs, {dpo['micro_batches']} micro-batches",
        "evaluation": f"{plan['eval_prompts']} held-out prompts: a sample each, KL to pi_ref, reward",
    }[label]


def _wall(seconds: float | None) -> str:
    """A stage's wall seconds; '-' for a PPO extrapolated in depth, whose wall time is not extrapolated."""
    return "-" if seconds is None else f"{seconds:.0f}"


def format_measured(report: dict) -> str:
    """The table of the stages as measured here (PPO at full depth extrapolated when it could not run there)."""
    machine, plan = report["machine"], report["plan"]
    precision = "float32" if plan["precision"] == "no" else plan["precision"]
    lines = [
        f"dry run of the {report['preset']} preset, measured on {machine['cpu']} ({machine['cores']} cores, "
        f"{plan['threads']} torch threads, device {machine['device']}, {precision}); "
        f"memory: {report['stages']['sft']['memory']}; FLOPs counted by torch's FlopCounterMode",
        "",
        f"{'stage':16}{'wall s':>8}{'peak GiB':>10}{'TFLOP':>10}{'disk GiB peak/kept':>20}  what ran, at the preset's "
        "shapes",
    ]
    for label, stage in report["stages"].items():
        if label == "ppo" and not stage.get("extrapolated_from_layers"):
            continue  # measured at full depth: its own line is above
        name = f"ppo ({plan['policy_layers']} layers)" if label == "ppo" else label
        lines.append(
            f"{name:16}{_wall(stage['seconds']):>8}{stage['peak_memory_bytes'] / GIB:10.1f}"
            f"{_number(stage['flops'] / 1e12, 10)}"
            f"{stage['disk_peak_bytes'] / GIB:11.2f} /{stage['disk_kept_bytes'] / GIB:6.2f}  "
            f"{_what_ran(label, stage, plan)}"
        )
    return "\n".join(lines)


def format_bill(report: dict) -> str:
    """The GPU bill of the whole sweep (extrapolated) and its disk budget."""
    bill = report["bill"]
    lines = [
        f"GPU bill of the whole {report['preset']} sweep: counted FLOPs at {bill['mfu']:.0%} of the bf16 peak "
        "(A100 312, H100 989 TFLOP/s), sampling no faster than one weight read per token (extrapolated)",
        f"{'stage':22}{'PFLOP':>10}{'A100 h':>9}{'H100 h':>9}{'peak GiB':>10}  fits one 80 GB GPU (peak: measured here,"
        " PPO extrapolated)",
    ]
    for row in bill["rows"]:
        peak = row["peak_memory_bytes"]
        fits = "yes" if row["fits_80gb"] else "no"
        floor = " (weight-read bound)" if row["sampling_floor_hours"]["A100"] >= row["hours"]["A100"] > 0 else ""
        lines.append(
            f"{row['stage']:22}{_number(row['flops'] / 1e15, 10)}{_number(row['hours']['A100'], 9)}"
            f"{_number(row['hours']['H100'], 9)}"
            f"{peak / GIB:10.1f}  {fits}, {row['fits_with']}{floor}"
        )
        lines.append(f"{'':22}  {row['work']}" + (f"; derived: {row['derived']}" if row["derived"] else ""))
    disk = bill["disk"]
    lines += [
        f"{'total':22}{_number(bill['total_flops'] / 1e15, 10)}{_number(bill['total_hours']['A100'], 9)}"
        f"{_number(bill['total_hours']['H100'], 9)}",
        f"not in these hours: the per-token overhead of generate (kernel launches, Python), for "
        f"{sum(row['token_steps'] for row in bill['rows']):,.0f} sampled token steps (batches x new tokens); "
        "make gpu-check measures it (ms per token step)",
        "",
        f"disk of the sweep (from the measured stage sizes): {disk['total_kept_bytes'] / GIB:.0f} GiB kept when done "
        f"(final weights of every run, SFT, reward model, pairs) + 2 x "
        f"{max(disk['checkpoint_bytes'].values()) / GIB:.0f} GiB while the largest checkpoint is rewritten = "
        f"{disk['budget_bytes'] / GIB:.0f} GiB at most",
    ]
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """The measured stages, the bill of the whole sweep and the disk budget, as the command prints them."""
    measured = sum(stage["process_seconds"] for stage in report["stages"].values() if stage.get("process_seconds"))
    return (f"{format_measured(report)}\n\n{format_bill(report)}\n"
            f"wall time of the measured stages' processes: {measured:.0f} s in all (stages measured before are kept); "
            f"this invocation: {report['seconds_this_invocation']:.0f} s")  # fmt: skip
