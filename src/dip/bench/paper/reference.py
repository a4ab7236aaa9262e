"""The paper's numbers, typed once from its text and tables (arXiv 2504.14145 v2, ASPLOS '26).

Only numbers the paper states are here: per-bar values of its figures are not given in its text, so
the rows that would need them have no paper value (``None`` in the results). Where the text states a
number whose reading needs a choice (which iterations, which sizes), ``reading`` says the one taken.
Ratios are written as the paper's percentages turned into factors: "52.9% slower" is 1.529.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAPER", "PaperNumber", "paper_value"]


@dataclass(frozen=True)
class PaperNumber:
    """One stated number: the experiment and row it belongs to, its value and where it comes from."""

    experiment: str
    row: str
    value: float
    unit: str
    source: str
    reading: str = ""


PAPER: tuple[PaperNumber, ...] = (
    # Table 1 (§2.3): 7B models on 8 GPUs (TP 2, PP 4) under 1F1B, FLOPs per iteration held fixed.
    PaperNumber("table1", "LM-7B: iteration time", 4.068, "s", "Table 1"),
    PaperNumber("table1", "LM-7B: PFLOPs per iteration", 12.8, "PFLOP", "Table 1"),
    PaperNumber("table1", "LM-7B: MFU", 0.400, "", "Table 1"),
    PaperNumber("table1", "VLM-7B static data: iteration time", 4.567, "s", "Table 1"),
    PaperNumber("table1", "VLM-7B static data: PFLOPs per iteration", 12.7, "PFLOP", "Table 1"),
    PaperNumber("table1", "VLM-7B static data: MFU", 0.351, "", "Table 1"),
    PaperNumber("table1", "VLM-7B dynamic data: iteration time", 6.789, "s", "Table 1"),
    PaperNumber("table1", "VLM-7B dynamic data: PFLOPs per iteration", 12.8, "PFLOP", "Table 1"),
    PaperNumber("table1", "VLM-7B dynamic data: MFU", 0.239, "", "Table 1"),
    PaperNumber("table1", "VLM-7B static data: overhead (1 - MFU / LM MFU)", 0.125, "", "§2.3 text"),
    PaperNumber("table1", "VLM-7B dynamic data: overhead (1 - MFU / LM MFU)", 0.403, "", "§2.3 text"),
    # Fig. 8a (§7.2): only the ranges of DIP's gains are stated.
    PaperNumber(
        "e2e",
        "VLM: DIP speedup over its baselines, lowest",
        1.156,
        "x",
        "§7.2 text",
        "DIP beats Megatron-LM, nnScaler* and Optimus by 15.6%-76.2% on the VLM setups",
    ),
    PaperNumber("e2e", "VLM: DIP speedup over its baselines, highest", 1.762, "x", "§7.2 text"),
    PaperNumber(
        "e2e",
        "T2V: DIP speedup over its baselines, lowest",
        1.366,
        "x",
        "§7.2 text",
        "DIP beats Megatron-LM and nnScaler* by 36.6%-97.3% on the T2V setups",
    ),
    PaperNumber("e2e", "T2V: DIP speedup over its baselines, highest", 1.973, "x", "§7.2 text"),
    # Fig. 8b (§7.2): the rise-and-fall workload on VLM-S.
    PaperNumber("dynamic", "iteration 6: Megatron-LM / DIP", 1.529, "x", "§7.2 text"),
    PaperNumber(
        "dynamic",
        "iteration 6: better of nnScaler*, Optimus / DIP",
        1.104,
        "x",
        "§7.2 text",
        "'nnScaler and Optimus help partly but are still 10.4% slower', read at iteration 6 like the "
        "sentence's Megatron-LM number",
    ),
    PaperNumber(
        "dynamic",
        "iterations 15-20: nnScaler* / DIP, largest",
        1.505,
        "x",
        "§7.2 text",
        "'a 50.5% degradation during iterations 15-20', read as nnScaler*'s largest gap to DIP there",
    ),
    # Table 5 (§7.3): the performance breakdown on VLM-S, in the table's order.
    PaperNumber("ablation", "Megatron-LM", 26.13, "s", "Table 5"),
    PaperNumber("ablation", "+ modality-aware partitioner", 22.27, "s", "Table 5"),
    PaperNumber("ablation", "+ pipeline stage interleaving", 18.81, "s", "Table 5"),
    PaperNumber("ablation", "+ pipeline segment reordering", 17.61, "s", "Table 5"),
    PaperNumber("ablation", "+ per-layer memory optimisation", 16.05, "s", "Table 5"),
    # Fig. 9 (§7.3): image sub-microbatch sizes 4..32 on VLM-S.
    PaperNumber("submb", "best image sub-microbatch size", 12, "images", "§7.3 text"),
    PaperNumber(
        "submb",
        "worst / best schedule, largest over sizes above 12",
        1.154,
        "x",
        "§7.3 text",
        "'smaller sizes (4-12) shrink the best/worst gap from 15.4% to 5.1%': 15.4% for the larger sizes",
    ),
    PaperNumber(
        "submb",
        "worst / best schedule, largest over sizes 4-12",
        1.051,
        "x",
        "§7.3 text",
        "the 5.1% of the same sentence, for sizes 4 to 12",
    ),
    PaperNumber(
        "submb",
        "sizes below 8 / sizes 8-16, best iteration time",
        1.121,
        "x",
        "§7.3 text",
        "'sizes < 8 underuse the GPU: +12.1% iteration time vs medium sizes'",
    ),
    # Fig. 10 (§7.3): rank-0 memory on VLM-M.
    PaperNumber("memory", "Optimus / Megatron-LM: peak memory, rank 0", 1.253, "x", "§7.3 text"),
    PaperNumber(
        "memory",
        "DIP / Megatron-LM: memory fluctuation, rank 0",
        0.471,
        "x",
        "§7.3 text",
        "'52.9% fewer memory fluctuations than Megatron-LM'; fluctuation measured here as the "
        "time-weighted standard deviation of rank 0's memory over the iteration",
    ),
    PaperNumber(
        "memory",
        "Optimus / DIP: iteration time at Optimus's peak memory",
        1.122,
        "x",
        "§7.3 text",
        "'12.2% better performance than Optimus at equal peak memory'",
    ),
    # Fig. 13 (§7.4): simulator accuracy.
    PaperNumber("accuracy", "after calibration: mean accuracy", 0.976, "", "§7.4 text"),
    PaperNumber(
        "accuracy",
        "before calibration: worst step",
        0.90,
        "",
        "§7.4 text",
        "'before calibration, relative errors reach up to 10%'",
    ),
    # Fig. 14 (§7.5): simulated XL setups on H100.
    PaperNumber("xl", "VLM-XL: DIP MFU, better of 8k and 16k", 0.36, "", "§7.5 text"),
    PaperNumber("xl", "T2V-XL: DIP MFU, better of 3k and 6k", 0.39, "", "§7.5 text"),
    PaperNumber("xl", "largest DIP speedup over a baseline", 1.828, "x", "§7.5 text", "'by up to 82.8%'"),
)

_BY_KEY = {(p.experiment, p.row): p for p in PAPER}


def paper_value(experiment: str, row: str) -> float | None:
    """The paper's number for ``row`` of ``experiment``, ``None`` where the paper states none."""
    hit = _BY_KEY.get((experiment, row))
    return None if hit is None else float(hit.value)
