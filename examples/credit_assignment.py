"""Token credit of GRPO, RLSD and CEPO on one hand-made rollout (paper Sec. 3.3-3.4, Proposition 1).

A correct rollout (A > 0) of five tokens. The log-probs of each token under the student (P_S), the
correct-answer teacher (P_T+) and the wrong-answer teacher (P_T-) are chosen to show the three cases:
a filler token (all three agree), a fluent token both teachers like more than the student (RLSD credits
it, CEPO does not: r- supports it as much as r+), and a decisive step r+ supports and r- disfavours.

    python examples/credit_assignment.py
"""

from __future__ import annotations

import torch

from cepo.algorithms import contrastive_delta, evidence_weights, modulate_advantages, rlsd_delta

TOKENS = ["Let", "the", "x+4=3x-6", "so", "x=5"]
LOGP_STUDENT = torch.tensor([[-0.10, -0.05, -2.50, -0.20, -1.20]])
LOGP_POS = torch.tensor([[-0.10, -0.02, -0.90, -0.20, -0.30]])  # r+ = the ground truth
LOGP_NEG = torch.tensor([[-0.10, -0.02, -3.40, -0.20, -2.80]])  # r- = a wrong answer of the group


def main() -> None:
    adv = torch.tensor([1.0])
    mask = torch.ones_like(LOGP_STUDENT)
    lam, eps_w = 0.5, 0.5
    rlsd = rlsd_delta(LOGP_POS, LOGP_STUDENT, mask)
    cepo = contrastive_delta(LOGP_POS, LOGP_NEG, LOGP_STUDENT, torch.tensor([True]), mask)
    rows = {
        "GRPO A_t": adv.expand(len(TOKENS)),
        "RLSD w_t": evidence_weights(adv, rlsd)[0],
        "RLSD A_t": modulate_advantages(adv, rlsd, mask, lam, eps_w)[0],
        "CEPO w_t": evidence_weights(adv, cepo)[0],
        "CEPO A_t": modulate_advantages(adv, cepo, mask, lam, eps_w)[0],
    }
    print(f"{'':10}" + "".join(f"{t:>11}" for t in TOKENS))
    for name, values in rows.items():
        print(f"{name:10}" + "".join(f"{float(v):>11.3f}" for v in values))
    low, high = 1 - lam * eps_w, 1 + lam * eps_w
    print(f"\nlambda={lam}, eps_w={eps_w}: A_t lies in A*[{low}, {high}] and keeps the sign of A (Theorem 1)")


if __name__ == "__main__":
    main()
