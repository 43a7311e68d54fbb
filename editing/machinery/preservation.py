"""Writing new values at new keys while the keys worth keeping keep their outputs.

A ROME-family edit of the MLP output projection W (d_out × d_in) writes v* at the key k*.
Among all updates Δ with (W + Δ) k* = v*, ROME's is the one that moves the outputs of the
keys the model commonly sees least: it minimises E‖Δk‖² = tr(Δ C₀ Δᵀ) over the corpus keys.
Amend's model is edited again and again, so the keys worth keeping are more than the corpus:

    A  = C₀  +  λ_h Σ_{earlier edits i} k_i k_iᵀ  +  λ_s Σ_{same subject j} k_j k_jᵀ
            +  λ_n Σ_{other subjects m} k_m k_mᵀ  +  ρ ī I

    Δ  = argmin tr(Δ A Δᵀ)  s.t.  Δ K = R      (K = [k*₁ … k*_n] the keys written, R = V* − W K)
       = R (Kᵀ A⁻¹ K)⁻¹ (A⁻¹ K)ᵀ                 (n = 1: ROME's (v* − Wk*)(A⁻¹k*)ᵀ / (k*ᵀA⁻¹k*))

Each term's reason:
  * C₀ = E[k kᵀ], the keys the model sees in ordinary text: ROME (Meng et al., 2022, eq. 2).
  * Σ k_i k_iᵀ over the keys every earlier applied edit at this layer wrote: AlphaEdit's history
    term (Fang et al., ICLR 2025, the K_p K_pᵀ of eq. 7).  By Sherman–Morrison an edit's leak onto
    an earlier key k_i shrinks by 1 / (1 + λ_h k_iᵀ A₀⁻¹ k_i); the Mahalanobis size k_iᵀC₀⁻¹k_i of
    a key is about d_in, so λ_h = 1 keeps earlier edits to a thousandth of their leak, and with
    λ_h → ∞ the sequence of solves equals one solve of all edits at once (the "sequential ≡ one-time
    edit" view of OTE-SE, 2026): the stream stays as healthy as a batch.
  * Keys of the edited subject's other relations ("{} was born in", "The native language of {}
    is", ...): the thesis's second idea (DESIGN.md §5) put into the same solve — where such a key
    differs from k* (a relation before the subject changes the subject's key), the update moves
    its output little, so the subject's other facts stay.
  * Keys of other well-known subjects in the edit's own prompt ("The mother tongue of Marie Curie
    is" beside "... of Danielle Darrieux is"): the same relation of other subjects, where ROME's
    edits bleed over to similar names (Meng et al. 2022, §3.4's neighbourhood score).
  * ρ ī I with ī = tr(C₀)/d_in: a ridge in the units of the keys; keeps A invertible when C₀ is
    estimated from few tokens.

Unlike AlphaEdit, C₀ stays a penalty inside the solve instead of a projection onto its
approximate null space: BetaEdit (IJCAI 2026) shows that a fixed projection drifts away from
the history over a one-edit-at-a-time stream, and with an exact write (Δk* = r, not least
squares) a projection would throw away the part of k* that lies in C₀'s principal space.  The
write stays exact, so reliability is ROME's; with no history and no same-subject keys the solve
is ROME's update (r-ROME's form, one key k* in numerator and denominator: Gupta et al., 2024).

Every edit's Δ stays its own additive delta (``editing.delta``), stored with the keys and values
it wrote; the history is read from the deltas applied now, so it is persisted with them, rebuilt
by replaying them and loses an edit's keys when that edit is reverted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editing.errors import KeysTooClose

MAX_KEY_COSINE = 0.99  # two keys closer than this are one key to the solve

@dataclass
class PreservedKeys:
    """The keys one solve must keep, and how strongly (see the module docstring)."""

    # C₀ (d, d); None: ROME without statistics, C₀ = ī I with ī the mean square of the written
    # keys' coordinates (the scale the other terms' weights are stated in)
    moment: torch.Tensor | None
    history: torch.Tensor | None = None  # (n_h, d) keys written by earlier edits at this layer
    history_weight: float = 0.0  # λ_h
    same_subject: torch.Tensor | None = None  # (n_s, d) keys of the subject's other relations
    same_subject_weight: float = 0.0  # λ_s
    other_subjects: torch.Tensor | None = None  # (n_o, d) keys of other subjects in the edit's prompt
    other_subjects_weight: float = 0.0  # λ_n
    ridge: float = 0.0  # ρ, in units of the mean eigenvalue of C₀

    def matrix(self, written: torch.Tensor) -> torch.Tensor:
        """A (d, d) in float64 (the solves below divide by small eigenvalues), for the keys
        ``written`` (n, d)."""
        d, device = written.shape[1], written.device
        if self.moment is None:
            a = torch.eye(d, dtype=torch.float64, device=device) * written.double().square().mean()
        else:
            a = self.moment.to(device, torch.float64).clone()
        for keys, weight in ((self.history, self.history_weight), (self.same_subject, self.same_subject_weight),
                             (self.other_subjects, self.other_subjects_weight)):
            if keys is not None and len(keys) and weight > 0:
                k = keys.to(device, torch.float64)  # (n, d)
                a.addmm_(k.T, k, alpha=weight)
        if self.ridge > 0:
            scale = written.double().square().mean() if self.moment is None else self.moment.diagonal().double().mean()
            a.diagonal().add_(self.ridge * float(scale))
        return a


def solve_write(preserved: PreservedKeys, keys: torch.Tensor, residuals: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of Δ = U Vᵀ = R (KᵀA⁻¹K)⁻¹ (A⁻¹K)ᵀ, so that Δ k_i = r_i for every written key.

    ``keys`` (n, d_in) are the k* of the facts written, ``residuals`` (n, d_out) their v* − W k*.
    Returns U (n, d_out) and V (n, d_in) in float32 (row i: the i-th rank-one piece, u_i v_iᵀ,
    so ΔW = Uᵀ V).  Two keys that are (nearly) the same with different values cannot both be
    written: the solve would blow up (‖Δ‖ thousands of times a single write at cosine 0.999),
    so ``KeysTooClose`` names the pair (by index) where the cosine in A⁻¹'s metric exceeds
    ``MAX_KEY_COSINE``.
    """
    k = keys.to(torch.float64)  # (n, d_in)
    a = preserved.matrix(k)  # (d_in, d_in)
    a_inv_k = torch.linalg.solve(a, k.T)  # (d_in, n) = A⁻¹K
    gram = k @ a_inv_k  # (n, n) = KᵀA⁻¹K
    if len(k) > 1:
        scale = gram.diagonal().sqrt()
        cosine = (gram / scale[:, None] / scale[None, :]).fill_diagonal_(0)
        worst = int(cosine.abs().argmax())
        i, j = divmod(worst, len(k))
        if abs(float(cosine[i, j])) > MAX_KEY_COSINE:
            raise KeysTooClose(str(i), str(j), float(cosine[i, j]))
    u = torch.linalg.solve(gram, residuals.to(torch.float64))  # (n, d_out) = (KᵀA⁻¹K)⁻¹ R
    return u.float(), a_inv_k.T.float()
