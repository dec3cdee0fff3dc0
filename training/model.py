"""The MatterSim-MT model: a GeoMFormer-style transformer with seven property heads.

Implements ``shared/design/model-spec.md``. One forward pass maps the flat-edge graph of a batch of structures
(see ``mtsim.graph``) to

=============== ========== =============================================================
``energy``      [b]        eV
``forces``      [n,3]      eV/Å, ``-dE/dpositions``
``stress``      [b,3,3]    eV/Å^3, ``(1/V) dE/dstrain`` (ASE sign; zero where the cell has no volume)
``magmoms``     [n]        μB
``charges``     [n]        e, summing to zero per structure
``born_charges`` [n,3,3]   e, ``Z[i, a, b] = dF_ib / dE_a`` (field index first), summing to zero per structure
``dielectric``  [b,3,3]    eps_inf, symmetric
=============== ========== =============================================================

Implementation rules that keep the model exportable to a fixed ONNX graph (see ``mtsim.training.export``):
edge tensors are in the receiver-slot layout [n,k,...] (``slot_graph``: each atom's edges as receiver, from the
``receiver_slots`` input, plus padding slots whose mask is zero, so they are zero in every tensor summed over
edges and in the gradient of every gathered one). Receiver features broadcast over the slots, sums over an atom's
edges are sums over k, and sender features are gathered with ``SlotGather``, whose backward ``SlotSum`` gathers
each atom's slots as sender (``sender_slots``) and sums them: the traced graph has no scatter over edges at all.
The few atom <-> structure gathers and sums use ``Tensor.gather`` and ``Tensor.scatter_add`` (never
``index_put``/``ScatterND``); no data-dependent control flow; GELU is the tanh form, which every onnxruntime
kernel has in float32 and float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from mtsim.onnx_format import OUTPUT_NAMES
from mtsim.units import BOHR, COULOMB_EV_A

MAX_Z = 94
PROPERTIES = OUTPUT_NAMES


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters (Table S1). ``num_blocks`` transformer blocks, each with four attention modules."""

    num_blocks: int = 2
    dim: int = 128
    ffn_dim: int = 128
    num_heads: int = 8
    num_gaussians: int = 64
    cutoff: float = 5.0
    preset: str = "custom"
    repulsion: bool = False
    """ZBL pair repulsion under the learned energy (``ZBLRepulsion``); off in checkpoints written before it."""

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")


PRESETS = {
    "1M": ModelConfig(2, 128, 128, 8, 64, 5.0, "1M", repulsion=True),
    "10M": ModelConfig(3, 320, 320, 16, 128, 5.0, "10M", repulsion=True),
    "220M": ModelConfig(6, 768, 3078, 32, 128, 5.0, "220M", repulsion=True),
    "1.3B": ModelConfig(9, 1536, 6144, 32, 128, 5.0, "1.3B", repulsion=True),
}


# ----------------------------------------------------------------------------------------------- graph helpers
def gather(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along dim 0, written as ``gather`` so that its backward is a ``scatter_add``."""
    return x.gather(0, index.view(-1, *([1] * (x.dim() - 1))).expand(-1, *x.shape[1:]))


def scatter_sum(src: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum the rows of ``src`` into ``size`` rows by ``index`` (dim 0)."""
    out = src.new_zeros((size, *src.shape[1:]))
    return out.scatter_add(0, index.view(-1, *([1] * (src.dim() - 1))).expand_as(src), src)


class SlotGather(torch.autograd.Function):
    """``x[senders]`` ([n,...] -> [n,k,...]: the sender atom of each receiver slot); backward: ``SlotSum`` over
    ``positions`` (each atom's slots as sender, see ``Graph``), exact where the gradient's padding slots are zero
    (as in the model, by its mask)."""

    @staticmethod
    def forward(ctx, x: Tensor, senders: Tensor, positions: Tensor) -> Tensor:
        ctx.save_for_backward(senders, positions)
        return x.index_select(0, senders.reshape(-1)).view(*senders.shape, *x.shape[1:])

    @staticmethod
    def backward(ctx, grad: Tensor):
        senders, positions = ctx.saved_tensors
        return SlotSum.apply(grad, senders, positions), None, None


class SlotSum(torch.autograd.Function):
    """``out[a] = sum of src[s] over the slots s whose sender is a`` ([n,k,...] -> [n,...]), computed as a gather of
    each atom's slots (``positions`` [n,ks], flat slot indices, padded with a padding slot's) and a sum over them,
    in edge order. Padding slots of ``src`` must be zero. Backward: ``SlotGather``."""

    @staticmethod
    def forward(ctx, src: Tensor, senders: Tensor, positions: Tensor) -> Tensor:
        ctx.save_for_backward(senders, positions)
        rows = src.reshape(-1, *src.shape[2:]).index_select(0, positions.reshape(-1))
        return rows.view(*positions.shape, *src.shape[2:]).sum(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        senders, positions = ctx.saved_tensors
        return SlotGather.apply(grad, senders, positions), None, None


def channel_chunks(x: Tensor, parts: int) -> tuple[Tensor, ...]:
    """``x.chunk(parts, dim=-1)`` as ``unflatten`` + ``unbind``: exported as ``Slice``/``Squeeze`` with a
    ``Concat`` backward, which every onnxruntime provider runs. (``chunk``/``split`` export as ``SplitToSequence``,
    which the CUDA provider lacks, so whole edge tensors went to the CPU and back; plain slices have a
    zeros + ``ScatterND`` backward.)"""
    return x.unflatten(-1, (parts, x.shape[-1] // parts)).unbind(-2)


def _slots(edge_index: Tensor, num_atoms: int) -> tuple[Tensor, Tensor]:
    """``receiver_slots``, ``sender_slots`` of ``edge_index`` (``mtsim.graph.edge_slots``), on its device."""
    from mtsim.graph import edge_slots

    index = edge_index.detach().cpu().numpy()
    return tuple(torch.from_numpy(edge_slots(index[k], num_atoms)).to(edge_index.device) for k in (0, 1))


def smooth_cutoff(d: Tensor, cutoff: float) -> Tensor:
    """m(d) = 1 - 6x^5 + 15x^4 - 10x^3, x = d / r_c; 0 beyond r_c (C^2 at r_c)."""
    x = d / cutoff
    m = 1.0 - x * x * x * (10.0 - x * (15.0 - 6.0 * x))
    return torch.where(x < 1.0, m, torch.zeros_like(m))


def triple_product(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """a · (b × c) for [..., 3] tensors (the signed cell volume for lattice rows a, b, c)."""
    return (
        a[..., 0] * (b[..., 1] * c[..., 2] - b[..., 2] * c[..., 1])
        + a[..., 1] * (b[..., 2] * c[..., 0] - b[..., 0] * c[..., 2])
        + a[..., 2] * (b[..., 0] * c[..., 1] - b[..., 1] * c[..., 0])
    )


@dataclass
class Graph:
    """Per-edge geometry shared by every module of one forward pass, in the receiver-slot layout [n,k,...]: slot
    (i, c) is edge ``receiver_slots[i, c]`` of receiver i, or padding (mask zero); every atom has at least one
    padding slot (column k - 1). See ``slot_graph``."""

    senders: Tensor  # j of each slot [n,k] (padding: atom 0)
    sender_positions: Tensor  # [n,ks] flat slot indices of each atom's edges as sender, padded with slot k - 1
    is_edge: Tensor  # [n,k] bool, False on padding slots
    mask: Tensor = None  # m_ij [n,k]; zero on padding slots
    unit: Tensor = None  # r_ij / |r_ij| [n,k,3]; zero on self edges (on padding slots: masked, any value)
    basis: Tensor = None  # Phi(|r_ij|) [n,k,K]

    def at_receivers(self, x: Tensor) -> Tensor:
        """x_i per slot, [n,1,...] (broadcasts over the slots)."""
        return x.unsqueeze(1)

    def at_senders(self, x: Tensor) -> Tensor:
        """x_j per slot, [n,k,...]."""
        return SlotGather.apply(x, self.senders, self.sender_positions)

    def sum_at_receivers(self, src: Tensor) -> Tensor:
        """sum_j src_ij per atom i (``src`` [n,k,...] zero on padding slots)."""
        return src.sum(1)

    def aggregate(self, logits: Tensor, values: Tensor) -> Tensor:
        """Renormalised smooth-mask attention: sum_j w_ij V_j, w_ij = exp(a_ij) m_ij / sum_k exp(a_ik) m_ik.

        ``logits`` [n,k,H]; ``values`` [n,k,...,H,dh] (already gathered at the senders). The maximum subtracted
        for stability is over the atom's edges (not its padding) and detached: it cancels exactly, so gradients
        are unchanged. Padding slots take that maximum as their logit (their weight is zero either way).
        """
        logits_ = logits.detach()
        top = torch.where(self.is_edge[:, :, None], logits_, logits_[:, :1]).amax(1, keepdim=True)
        # padding slots hold an unrelated atom pair whose logit can exceed the top by > 88: exp would be inf in
        # float32 and inf * mask 0 NaN; at the top they give exp(0) * 0 = 0, what they give whenever finite
        logits = torch.where(self.is_edge[:, :, None], logits, top)
        weight = torch.exp(logits - top) * self.mask[:, :, None]
        norm = weight.sum(1)
        extra = [1] * (values.dim() - 4)
        out = (weight.view(*weight.shape[:2], *extra, weight.shape[2], 1) * values).sum(1)
        return out / norm.view(norm.shape[0], *extra, norm.shape[1], 1)


def slot_graph(
    edge_index: Tensor, shifts: Tensor, receiver_slots: Tensor, sender_slots: Tensor
) -> tuple[Graph, Tensor, Tensor]:
    """The receiver-slot ``Graph`` (geometry still unset), each slot's image shift [n,k,3] and whether it is a
    self edge (i, i, 0) [n,k]. The contract's slots (padded with e, the number of edges) get one padding column
    more, so that every atom has a padding slot; padding slots hold the padding edge (atom 0 to itself, shift 0).
    (No ``arange``: its export has float constants, which a float64 file must not hold.)"""
    e = shifts.shape[0]
    slots = torch.cat([receiver_slots, torch.full_like(receiver_slots[:, :1], e)], 1)
    n, k = slots.shape
    flat = slots.reshape(-1)
    edge_index = torch.cat([edge_index, torch.zeros_like(edge_index[:, :1])], 1)
    shifts = torch.cat([shifts, torch.zeros_like(shifts[:1])])
    senders = edge_index[1].index_select(0, flat).view(n, k)
    slot_shifts = shifts.index_select(0, flat).view(n, k, 3)
    is_self = ((edge_index[0] == edge_index[1]) & (shifts == 0).all(dim=1)).index_select(0, flat).view(n, k)
    # flat slot index of each edge (the padding edge's: slot k - 1 of atom 0), read at each atom's sender slots
    where = torch.zeros_like(edge_index[0]).scatter(0, flat, torch.ones_like(flat).cumsum(0) - 1)
    where = torch.cat([where[:-1], torch.full_like(where[:1], k - 1)])
    positions = where.index_select(0, sender_slots.reshape(-1)).view(sender_slots.shape)
    return Graph(senders, positions, flat.view(n, k) < e), slot_shifts, is_self


# ----------------------------------------------------------------------------------------------- layers
class GaussianBasis(nn.Module):
    """Phi_k(d) = exp(-((d - mu_k) / sigma_k)^2 / 2) with learned means and widths, d in Å."""

    def __init__(self, num: int, cutoff: float):
        super().__init__()
        self.means = nn.Parameter(torch.linspace(0.0, cutoff, num))
        self.log_widths = nn.Parameter(torch.full((num,), math.log(cutoff / num)))

    def forward(self, d: Tensor) -> Tensor:
        z = (d[..., None] - self.means) * torch.exp(-self.log_widths)
        return torch.exp(-0.5 * z * z)


class EquivariantLayerNorm(nn.Module):
    """e / sqrt(mean_c |e_c|^2 + eps) * w_c for e [n,3,d]; rotation-equivariant, no centring.

    ``eps`` is 1 (in the units of e^2), not a tiny number: at sites whose environment is symmetric, e is zero up
    to rounding, and with eps = 1e-6 each norm would amplify that rounding 1000-fold, so that after a few layers
    the outputs depended on noise (a supercell then no longer gave the unit cell's per-atom outputs). With eps = 1
    the map is a contraction for small e and a normalisation for large e.
    """

    def __init__(self, dim: int, eps: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, e: Tensor) -> Tensor:
        norm2 = (e * e).sum(dim=1).mean(dim=-1)  # [n]
        return e * torch.rsqrt(norm2 + self.eps)[:, None, None] * self.weight


class Attention(nn.Module):
    """Base of the four attention modules: head split and the edge-softmax of ``Graph.aggregate``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads

    def heads(self, t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:-1], self.num_heads, self.head_dim)

    def attend(self, graph: Graph, q: Tensor, k: Tensor, v: Tensor, components: int = 1) -> Tensor:
        """q, k, v [n,(3,)d]; logits sum over components and head channels, scaled 1/sqrt(components * dh)."""
        q_i = graph.at_receivers(self.heads(q))
        k_j = graph.at_senders(self.heads(k))
        logits = (q_i * k_j).sum(-1)
        if components > 1:
            logits = logits.sum(2)
        logits = logits / math.sqrt(components * self.head_dim)
        out = graph.aggregate(logits, graph.at_senders(self.heads(v)))
        return out.flatten(-2)


class InvSelfAttention(Attention):
    """Invariant self-attention: Q, K, V linear in x."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, graph: Graph, x: Tensor) -> Tensor:
        q, k, v = channel_chunks(self.qkv(x), 3)
        return self.out(self.attend(graph, q, k, v))


class EquSelfAttention(Attention):
    """Equivariant self-attention: Q, K, V linear in e (no bias); logits sum over the 3 components."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, graph: Graph, e: Tensor) -> Tensor:
        q, k, v = channel_chunks(self.qkv(e), 3)
        return self.out(self.attend(graph, q, k, v, components=3))


class InvCrossAttention(Attention):
    """Invariant cross-attention: Q from x; K, V = sum_s (W1 e)_s ⊙ (W2 e)_s / sqrt(3), invariant."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 4 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, graph: Graph, x: Tensor, e: Tensor) -> Tensor:
        k1, k2, v1, v2 = channel_chunks(self.kv(e), 4)
        k = (k1 * k2).sum(1) / math.sqrt(3.0)
        v = (v1 * v2).sum(1) / math.sqrt(3.0)
        return self.out(self.attend(graph, self.q(x), k, v))


class EquCrossAttention(Attention):
    """Equivariant cross-attention: Q from e; K, V = (W1 x) ⊙ (W2 e)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv_x = nn.Linear(dim, 2 * dim)
        self.kv_e = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, graph: Graph, x: Tensor, e: Tensor) -> Tensor:
        kx, vx = channel_chunks(self.kv_x(x), 2)
        ke, ve = channel_chunks(self.kv_e(e), 2)
        k = kx[:, None, :] * ke
        v = vx[:, None, :] * ve
        return self.out(self.attend(graph, self.q(e), k, v, components=3))


class FeedForward(nn.Module):
    """Invariant Linear-GELU-Linear and the gated equivariant map e -> W3(GELU(W1 x) ⊙ W2 e)."""

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.inv = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.gate = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"))
        self.equ_in = nn.Linear(dim, ffn_dim, bias=False)
        self.equ_out = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        return self.inv(x), self.equ_out(self.gate(x)[:, None, :] * self.equ_in(e))


class TransformerBlock(nn.Module):
    """Pre-LN block: Inv-Self, Equ-Self, Inv-Cross, Equ-Cross attention, then the FFN; residual on both streams."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, h = config.dim, config.num_heads
        self.inv_self, self.equ_self = InvSelfAttention(d, h), EquSelfAttention(d, h)
        self.inv_cross, self.equ_cross = InvCrossAttention(d, h), EquCrossAttention(d, h)
        self.ffn = FeedForward(d, config.ffn_dim)
        self.norm_x = nn.ModuleList(nn.LayerNorm(d) for _ in range(4))
        self.norm_e = nn.ModuleList(EquivariantLayerNorm(d) for _ in range(4))

    def forward(self, graph: Graph, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        nx, ne = self.norm_x, self.norm_e
        x = x + self.inv_self(graph, nx[0](x))
        e = e + self.equ_self(graph, ne[0](e))
        x = x + self.inv_cross(graph, nx[1](x), ne[1](e))
        e = e + self.equ_cross(graph, nx[2](x), ne[2](e))
        dx, de = self.ffn(nx[3](x), ne[3](e))
        return x + dx, e + de


class Head(nn.Module):
    """Task head: Inv-Cross-Attn on the final features, then W2 LN(GELU(W1 x + b1)) + b2 -> [n, num_outputs]."""

    def __init__(self, config: ModelConfig, num_outputs: int):
        super().__init__()
        d = config.dim
        self.norm_x, self.norm_e = nn.LayerNorm(d), EquivariantLayerNorm(d)
        self.cross = InvCrossAttention(d, config.num_heads)
        self.mlp = nn.Sequential(
            nn.Linear(d, d), nn.GELU(approximate="tanh"), nn.LayerNorm(d), nn.Linear(d, num_outputs)
        )

    def forward(self, graph: Graph, x: Tensor, e: Tensor) -> Tensor:
        x = x + self.cross(graph, self.norm_x(x), self.norm_e(e))
        return self.mlp(x)


class ZBLRepulsion(nn.Module):
    """Ziegler-Biersack-Littmark universal screened-nuclear repulsion, switched off inside bonding distances.

    E_i = 1/2 sum_j s(r_ij) V(r_ij) (eV), V(r) = k_e Z_i Z_j / r phi(r / a), a = 0.8854 a0 / (Z_i^0.23 + Z_j^0.23),
    phi(x) = sum_k c_k exp(-b_k x). The switch s is 1 below ``INNER`` R_ij and falls to 0 at ``OUTER`` R_ij
    (1 - 10t^3 + 15t^4 - 6t^5, C^2), R_ij the sum of covalent radii (Cordero et al. 2008, ``ase.data``).
    """

    INNER, OUTER = 0.4, 0.7
    COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
    EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
    SCREENING_LENGTH = 0.8854 * BOHR  # Å

    def __init__(self):
        super().__init__()
        from ase.data import covalent_radii

        table = np.stack([np.arange(MAX_Z + 1), covalent_radii[: MAX_Z + 1]], axis=1)  # Z, covalent radius (Å)
        self.register_buffer("table", torch.tensor(table, dtype=torch.get_default_dtype()), persistent=False)

    @classmethod
    def description(cls) -> dict:
        """The form and parameters, as recorded in exported files."""
        return {
            "form": "ZBL universal screened-nuclear pair potential times a switch; E = 1/2 sum_ij s(r) V(r)",
            "screening_length_angstrom": cls.SCREENING_LENGTH,
            "screening_exponent": 0.23,
            "phi_coefficients": list(cls.COEFFICIENTS),
            "phi_exponents": list(cls.EXPONENTS),
            "switch": "1 - 10t^3 + 15t^4 - 6t^5, t = (r - inner R) / ((outer - inner) R), R = sum of covalent radii",
            "inner": cls.INNER,
            "outer": cls.OUTER,
            "covalent_radii": "Cordero et al. 2008 (ase.data.covalent_radii)",
        }

    def forward(self, graph: Graph, numbers: Tensor, d: Tensor, is_self: Tensor) -> Tensor:
        """Per-atom repulsion energies (eV) [n] from the slot distances ``d`` [n,k] (Å)."""
        atom = self.table[numbers]
        i, j = graph.at_receivers(atom), graph.at_senders(atom)
        pair = graph.is_edge & ~is_self
        r = torch.where(pair, d, torch.ones_like(d))  # self and padding slots: any distance, dropped below
        x = r * (i[..., 0] ** 0.23 + j[..., 0] ** 0.23) / self.SCREENING_LENGTH
        phi = sum(c * torch.exp(-b * x) for c, b in zip(self.COEFFICIENTS, self.EXPONENTS))
        v = COULOMB_EV_A * i[..., 0] * j[..., 0] * phi / r
        radii = i[..., 1] + j[..., 1]
        t = (r - self.INNER * radii) / ((self.OUTER - self.INNER) * radii)
        s = 1.0 - t * t * t * (10.0 - t * (15.0 - 6.0 * t))
        s = torch.where(t < 0.0, torch.ones_like(s), torch.where(t < 1.0, s, torch.zeros_like(s)))
        return 0.5 * torch.where(pair, s * v, torch.zeros_like(v)).sum(1)


# ----------------------------------------------------------------------------------------------- the model
class MTModel(nn.Module):
    """Multi-task model. ``forward`` takes the ONNX contract's inputs and returns the dict of ``PROPERTIES``.

    Output normalisation lives in buffers (saved in checkpoints and baked into exports): per-atom energy
    ``E_i = energy_scale * p_i + energy_shift + reference_energies[Z_i]`` (+ the ZBL repulsion when
    ``config.repulsion``), and one scale per other head.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.metadata: dict = {}  # provenance etc., saved in checkpoints and exported to ONNX metadata
        d, k = config.dim, config.num_gaussians
        self.atom_embedding = nn.Embedding(MAX_Z + 1, d)
        self.basis = GaussianBasis(k, config.cutoff)
        self.centrality = nn.Linear(k, d)
        self.equivariant_embedding = nn.Linear(k, d, bias=False)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_blocks))
        self.energy_head = Head(config, 1)
        self.magmom_head = Head(config, 1)
        self.charge_head = Head(config, 1)
        self.born_head = Head(config, 3)  # p, q, s of eqs. (11)-(12)
        self.dielectric_head = Head(config, 2)  # p', q' of eq. (9)
        self.repulsion = ZBLRepulsion() if config.repulsion else None
        self.register_buffer("reference_energies", torch.zeros(MAX_Z + 1))
        for name in ("energy_scale", "energy_shift", "magmom_scale", "charge_scale", "born_scale", "dielectric_scale"):
            self.register_buffer(name, torch.tensor(0.0 if name == "energy_shift" else 1.0))

    @property
    def dtype(self) -> torch.dtype:
        return self.centrality.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        batch: Tensor,
        edge_index: Tensor,
        shifts: Tensor,
        receiver_slots: Tensor | None = None,
        sender_slots: Tensor | None = None,
        compute_forces: bool = True,
    ) -> dict[str, Tensor]:
        """Inputs as in the ONNX contract (Å, rows of ``cell`` are lattice vectors); the slots are computed from
        ``edge_index`` when not given. In training mode the force and stress graphs are kept (``create_graph``)
        so that losses on them can be back-propagated."""
        n, b = numbers.shape[0], cell.shape[0]
        if receiver_slots is None or sender_slots is None:
            receiver_slots, sender_slots = _slots(edge_index, n)
        if compute_forces:
            positions = positions if positions.requires_grad else positions.detach().requires_grad_(True)
            strain = torch.zeros_like(cell).requires_grad_(True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            positions_ = positions + torch.einsum("ni,nij->nj", positions, gather(symmetric, batch))
            cell_ = cell + torch.bmm(cell, symmetric)
        else:
            positions_, cell_ = positions, cell
        graph, slot_shifts, is_self = slot_graph(edge_index, shifts, receiver_slots, sender_slots)
        # r_ij = x_j - x_i + sum_k S_k cell_k, the last as a broadcast product and a sum: onnxruntime ran the
        # batched 3x3 matmul of an einsum and its backward at ~30x the cost of the element-wise ops
        r = graph.at_senders(positions_) - graph.at_receivers(positions_)
        r = r + (slot_shifts[:, :, :, None] * gather(cell_, batch)[:, None]).sum(2)
        d2 = (r * r).sum(-1)
        d = torch.where(is_self, torch.zeros_like(d2), torch.sqrt(torch.where(is_self, torch.ones_like(d2), d2)))
        unit = r / torch.where(is_self, torch.ones_like(d), d)[..., None]
        graph.mask = smooth_cutoff(d, self.config.cutoff) * graph.is_edge.to(d.dtype)
        graph.unit, graph.basis = unit, self.basis(d)

        x, e = self.embed(graph, numbers)
        for block in self.blocks:
            x, e = block(graph, x, e)

        energy_atom = self.energy_scale * self.energy_head(graph, x, e)[:, 0] + self.energy_shift
        energy_atom = energy_atom + self.reference_energies[numbers]
        if self.repulsion is not None:
            energy_atom = energy_atom + self.repulsion(graph, numbers, d, is_self)
        energy = scatter_sum(energy_atom, batch, b)
        atoms_per_structure = scatter_sum(torch.ones_like(energy_atom), batch, b)
        out = {"energy": energy}
        if compute_forces:
            grad_pos, grad_strain = torch.autograd.grad(energy.sum(), (positions, strain), create_graph=self.training)
            out["forces"] = -grad_pos
            volume = torch.abs(triple_product(cell[:, 0], cell[:, 1], cell[:, 2]))
            has_volume = volume > 0
            inv_volume = torch.where(
                has_volume, 1.0 / torch.where(has_volume, volume, torch.ones_like(volume)), torch.zeros_like(volume)
            )
            out["stress"] = grad_strain * inv_volume[:, None, None]
        out["magmoms"] = self.magmom_scale * self.magmom_head(graph, x, e)[:, 0]
        charges = self.charge_scale * self.charge_head(graph, x, e)[:, 0]
        out["charges"] = charges - gather(scatter_sum(charges, batch, b) / atoms_per_structure, batch)
        out["born_charges"] = self.born_charges(graph, x, e, batch, b, atoms_per_structure)
        out["dielectric"] = self.dielectric(graph, x, e, batch, b, atoms_per_structure)
        return out

    def embed(self, graph: Graph, numbers: Tensor) -> tuple[Tensor, Tensor]:
        """x_i = emb(Z_i) + Linear(sum_j m_ij Phi(d_ij)); e_i = W sum_j m_ij Phi(d_ij) ⊗ r̂_ij (self edge: r̂ = 0)."""
        weighted = graph.mask[..., None] * graph.basis  # [n,k,K]
        centrality = graph.sum_at_receivers(weighted)
        x = self.atom_embedding(numbers) + self.centrality(centrality)
        directional = graph.sum_at_receivers(graph.unit[..., :, None] * weighted[..., None, :])
        return x, self.equivariant_embedding(directional)

    def born_charges(self, graph, x, e, batch, b, atoms_per_structure) -> Tensor:
        """Z_i = p_i sum_j m_ij q_j r̂⊗r̂ + p_i sum_{j!=k} m_ij m_ik q_j s_k r̂_ki ⊗ r̂_ij, then minus the mean.

        The triplet sum (over pairs of distinct edges) factorises: p_i (a_i ⊗ b_i - sum_j m_ij^2 s_j q_j
        r̂_ji ⊗ r̂_ij) with a_i = sum_k m_ik s_k r̂_ki, b_i = sum_j m_ij q_j r̂_ij.
        """
        p, q, s = self.born_head(graph, x, e).unbind(-1)
        m, unit = graph.mask, graph.unit
        mq, ms = m * graph.at_senders(q), m * graph.at_senders(s)
        outer = unit[..., :, None] * unit[..., None, :]  # r̂_ij ⊗ r̂_ij = r̂_ji ⊗ r̂_ji
        pair = graph.sum_at_receivers((mq + ms * mq)[..., None, None] * outer)
        a = graph.sum_at_receivers(-ms[..., None] * unit)  # r̂_ki = -r̂_ik
        b_vec = graph.sum_at_receivers(mq[..., None] * unit)
        z = self.born_scale * p[:, None, None] * (pair + a[:, :, None] * b_vec[:, None, :])
        mean = scatter_sum(z, batch, b) / atoms_per_structure[:, None, None]
        return z - gather(mean, batch)

    def dielectric(self, graph, x, e, batch, b, atoms_per_structure) -> Tensor:
        """eps = I + (1/N) sum_i sum_j m_ij p'_i q'_j r̂_ji ⊗ r̂_ji."""
        p, q = self.dielectric_head(graph, x, e).unbind(-1)
        mq = graph.mask * graph.at_senders(q)
        outer = graph.unit[..., :, None] * graph.unit[..., None, :]
        per_atom = p[:, None, None] * graph.sum_at_receivers(mq[..., None, None] * outer)
        eps = scatter_sum(per_atom, batch, b) / atoms_per_structure[:, None, None]
        return torch.eye(3, dtype=eps.dtype, device=eps.device) + self.dielectric_scale * eps

    # ------------------------------------------------------------------------------------- convenience
    def predict(self, structures) -> list[dict[str, np.ndarray]]:
        """Evaluate ``ase.Atoms`` / ``mtsim.Structure`` objects (one or a list); returns one dict per structure
        with the keys of ``PROPERTIES`` as numpy arrays (units as in the module docstring)."""
        from mtsim.graph import build_graph
        from mtsim.model import split_outputs

        single = not isinstance(structures, (list, tuple))
        structures = [structures] if single else list(structures)
        dtype = np.float64 if self.dtype == torch.float64 else np.float32
        graph = build_graph(structures, self.config.cutoff, dtype=dtype)
        device = self.centrality.weight.device
        inputs = {key: torch.from_numpy(value).to(device) for key, value in graph.items()}
        was_training = self.training
        self.eval()
        try:
            with torch.enable_grad():
                out = self(**inputs)
        finally:
            self.train(was_training)
        out = {key: value.detach().cpu().numpy() for key, value in out.items()}
        results = split_outputs(out, [len(s) for s in structures])
        return results[0] if single else results


def with_repulsion(model: MTModel, repulsion: bool) -> MTModel:
    """``model`` with the ZBL repulsion on or off: the same weights, buffers and metadata (the repulsion has no
    weights), so a checkpoint written without it can be fine-tuned with it."""
    if model.config.repulsion == repulsion:
        return model
    weight = model.centrality.weight
    new = MTModel(replace(model.config, repulsion=repulsion)).to(device=weight.device, dtype=weight.dtype)
    new.load_state_dict(model.state_dict())
    new.metadata = model.metadata
    return new


def build_model(preset: str = "1M", dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> MTModel:
    """A freshly initialised model of a Table S1 preset (``1M``, ``10M``, ``220M``, ``1.3B``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    config = ModelConfig(**{**asdict(PRESETS[preset]), **overrides})
    torch.manual_seed(seed)
    return MTModel(config).to(dtype)
