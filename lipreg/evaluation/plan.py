"""What an evaluation attacks and certifies: curves, radii, the ensemble and its budgets."""

from dataclasses import dataclass, field

from lipreg.errors import LipregError
from lipreg.evaluation.registry import ATTACKS, CERTIFICATES, CLASSIFICATION_ATTACKS, REGRESSION_ATTACKS, Work
from lipreg.functional.attacks import Norm
from lipreg.functional.ensemble import EnsembleBudget
from lipreg.task import TaskSpec

#: The curves whose per-sample results at ε feed the worst case (they use ``pgd_norm``).
PGD_CURVES = ("pgd", "pgd_sign")


@dataclass(frozen=True)
class EvaluationPlan:
    """Which attacks run at which radii with which budgets, and which certificate is given.

    The fields are ``RobustnessEvaluation``'s options (its docstring says what each means); the
    plan checks them once, with one-line errors that name the option.
    """

    noise_sigmas: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    noise_clamp: bool = True
    fgsm_epsilons: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3])
    fgsm_norm: Norm = "linf"
    pgd_epsilons: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    pgd_norm: Norm = "l2"
    pgd_steps: int = 100
    pgd_step_size: float = 0.25
    pgd_restarts: int = 1
    sign_pgd: bool = True
    ensemble: list[str] = field(default_factory=lambda: ["apgd-ce", "apgd-t", "square"])
    apgd_steps: int = 100
    apgd_targets: int = 9
    square_queries: int = 5000
    certificate: str = "class-pair"
    certified_radii: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 1.0, 1.58, 2.0])
    smoothing_sigma: float = 0.25
    smoothing_selection: int = 100
    smoothing_samples: int = 1000
    smoothing_alpha: float = 0.001
    smoothing_seed: int = 0

    def __post_init__(self) -> None:
        lists = {"noise_sigmas": self.noise_sigmas, "fgsm_epsilons": self.fgsm_epsilons,
                 "pgd_epsilons": self.pgd_epsilons, "certified_radii": self.certified_radii}
        for name, values in lists.items():
            if any(v < 0 for v in values):
                raise LipregError(f"evaluation.{name} must be >= 0, got {values}")
        if self.pgd_steps < 0 or self.pgd_step_size <= 0 or self.pgd_restarts < 1:
            raise LipregError(f"need pgd_steps >= 0, pgd_step_size > 0 and pgd_restarts >= 1; got {self.pgd_steps}, "
                              f"{self.pgd_step_size}, {self.pgd_restarts}")
        unknown = [name for name in self.ensemble if name not in CLASSIFICATION_ATTACKS]
        if unknown:
            raise LipregError(f"evaluation.ensemble: unknown attack(s) {unknown}; choose from "
                              f"{', '.join(CLASSIFICATION_ATTACKS)}")
        if self.certificate not in CERTIFICATES:
            raise LipregError(f"evaluation.certificate: unknown certificate {self.certificate!r}; choose from "
                              f"{', '.join(CERTIFICATES)}")
        if self.smoothing_sigma <= 0 or min(self.smoothing_selection, self.smoothing_samples) < 1 \
                or not 0 < self.smoothing_alpha < 1:
            raise LipregError(f"need smoothing_sigma > 0, smoothing_selection and smoothing_samples >= 1 and "
                              f"0 < smoothing_alpha < 1; got {self.smoothing_sigma}, {self.smoothing_selection}, "
                              f"{self.smoothing_samples}, {self.smoothing_alpha}")
        try:
            self.budget  # noqa: B018  (checks the budgets)
        except ValueError as error:
            raise LipregError(f"evaluation: {error}") from None

    @property
    def budget(self) -> EnsembleBudget:
        """The ensemble members' budgets (the margin PGD shares the PGD columns' steps)."""
        return EnsembleBudget(self.apgd_steps, self.apgd_targets, self.square_queries, max(self.pgd_steps, 1),
                              self.pgd_step_size)

    def curves(self) -> dict[str, list[float]]:
        """The attack families and their parameters (σ or ε)."""
        curves = {"noise": self.noise_sigmas, "fgsm": self.fgsm_epsilons, "pgd": self.pgd_epsilons}
        if self.sign_pgd and self.pgd_norm == "l2":
            curves["pgd_sign"] = self.pgd_epsilons
        return {name: list(values) for name, values in curves.items() if values}

    def members(self, task: TaskSpec, image_inputs: bool = True) -> list[str]:
        """The ensemble's attacks for ``task`` in the order they run (regression: APGD on the squared
        error); attacks that need image inputs ``[C, H, W]`` are left out for flat ones."""
        if not self.pgd_epsilons:
            return []
        if not task.classification:
            return list(REGRESSION_ATTACKS)
        return [name for name in self.ensemble if image_inputs or not ATTACKS[name].images_only]

    def closing_members(self, task: TaskSpec, image_inputs: bool = True) -> list[str]:
        """The members that close the ensemble and take one radius per image (``radii_at_once``): they run
        once over every radius, after the other members at each radius (classification only)."""
        members = self.members(task, image_inputs)
        count = 0
        while task.classification and count < len(members) and ATTACKS[members[-1 - count]].radii_at_once:
            count += 1
        return members[len(members) - count :]

    def radius_members(self, task: TaskSpec, image_inputs: bool = True) -> list[str]:
        """The members that run at each radius in turn, smallest first (all but :meth:`closing_members`)."""
        members = self.members(task, image_inputs)
        return members[: len(members) - len(self.closing_members(task, image_inputs))]

    def radii_label(self) -> str:
        """``ε=0.5`` or ``ε=0.5–2``: the radii a closing member attacks at once."""
        radii = sorted(self.pgd_epsilons)
        return f"ε={radii[0]:g}" + (f"–{radii[-1]:g}" if len(radii) > 1 else "")

    def describe_ensemble(self, task: TaskSpec, image_inputs: bool = True) -> list[str]:
        """What the robust accuracy is the worst case over, with budgets, in the order they run."""
        norm = self.pgd_norm.upper().replace("INF", "∞")
        described = []
        if self.pgd_steps > 0:
            described.append(f"PGD-{norm} ({task.loss_name}, {self.pgd_steps} steps of {self.pgd_step_size:g})")
            if "pgd_sign" in self.curves():
                described.append(f"PGD-{norm} sign steps, eq. (13) ({task.loss_name}, {self.pgd_steps} steps)")
        budget = self.budget
        return described + [ATTACKS[name].label(budget) for name in self.members(task, image_inputs)]

    def stages(self, task: TaskSpec, image_inputs: bool = True, certified: bool = False) -> list[str]:
        """The evaluation's stages on one chunk of images, in order (for the progress line)."""
        return list(self.stage_work(task, image_inputs, certified))

    def stage_work(self, task: TaskSpec, image_inputs: bool = True, certified: bool = False) -> dict[str, Work]:
        """Each stage of a chunk (in order, :meth:`stages`) with its work per image when no image leaves
        early: the certificate's ``CERTIFICATES[certificate].work`` where ``certified`` (the network has
        one), a noise curve's point one forward pass, FGSM's one forward+backward pass and a forward,
        a PGD column's ``pgd_steps·pgd_restarts`` passes, an ensemble member's ``ATTACKS[name].work``
        per radius (a closing one's times the radii it attacks at once)."""
        curves, budget = self.curves(), self.budget
        one_pass = {"noise": Work(1 / 3), "fgsm": Work(4 / 3)}
        pgd = Work(self.pgd_steps * self.pgd_restarts, self.pgd_steps * self.pgd_restarts)
        work = {"certificate": CERTIFICATES[self.certificate].work(self)} if certified else {}
        work |= {f"{c} {p:g}": one_pass[c] for c, values in curves.items() for p in values if c not in PGD_CURVES}
        work |= {f"{c} ε={e:g}": pgd for c, values in curves.items() for e in values if c in PGD_CURVES}
        for e in sorted(self.pgd_epsilons):
            work |= {f"{m} ε={e:g}": ATTACKS[m].work(budget) for m in self.radius_members(task, image_inputs)}
        for m in self.closing_members(task, image_inputs):
            member = ATTACKS[m].work(budget)
            work[f"{m} {self.radii_label()}"] = Work(member.passes * len(self.pgd_epsilons), member.steps)
        return work

    def settings(self) -> dict[str, object]:
        """The attack settings a result records (``settings`` in ``robustness.json``)."""
        return {"pgd_steps": self.pgd_steps, "pgd_step_size": self.pgd_step_size, "pgd_norm": self.pgd_norm,
                "fgsm_norm": self.fgsm_norm, "pgd_restarts": self.pgd_restarts, "apgd_steps": self.apgd_steps,
                "apgd_targets": self.apgd_targets, "square_queries": self.square_queries,
                "certificate": self.certificate, "certificate_label": CERTIFICATES[self.certificate].label(self)}
