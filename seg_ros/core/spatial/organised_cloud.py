"""The organised point cloud of a depth image and its support plane: points on the pixel
grid, masked smoothing, normals, neighbour shifts, and the RANSAC support plane that
:mod:`seg_ros.core.spatial.depth_objects` segments above. Vectorised in torch (the same code
on CUDA). No rclpy.
"""
from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, ok: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``x`` (H, W) over the valid pixels of each k x k window (odd k, clipped at the
    image's border), and the share of the window's in-image pixels that are valid.
    """
    xs = torch.where(ok, x, torch.zeros((), device=x.device))
    both = torch.stack([xs, ok.to(x.dtype), torch.ones_like(xs)])
    s, c, n = _box_sum(_box_sum(both, k, 2), k, 1)  # separable: rows, then columns
    return s / c.clamp_min(1e-6), c / n


def _box_sum(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Sums of ``x`` over windows of k (odd) along ``dim``, zeros beyond the border: shifted
    slices added (a few kernels on the whole tensor; a pooling kernel on a 320x240 grid
    took ~10x longer here).
    """
    r = k // 2
    n = x.shape[dim]
    out = x.clone()
    for d in range(1, r + 1):
        if d >= n:
            break
        out.narrow(dim, d, n - d).add_(x.narrow(dim, 0, n - d))
        out.narrow(dim, 0, n - d).add_(x.narrow(dim, d, n - d))
    return out


def shift(x: torch.Tensor, dy: int, dx: int, fill) -> torch.Tensor:
    """x[i + dy, j + dx] (``fill`` outside the image)."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def organised_points(z: torch.Tensor, fx: float, fy: float, cx: float, cy: float,
                     stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, h, w) points of the pixels (stride*i, stride*j) and their (h, w) validity."""
    zs = z[::stride, ::stride]
    h, w = zs.shape
    rows = torch.arange(h, device=z.device, dtype=torch.float32)[:, None] * stride
    cols = torch.arange(w, device=z.device, dtype=torch.float32)[None, :] * stride
    ok = torch.isfinite(zs) & (zs > 0)
    zz = torch.where(ok, zs, torch.zeros((), device=z.device))
    return torch.stack([(cols - cx) * zz / fx, (rows - cy) * zz / fy, zz]), ok


def normals(p: torch.Tensor, ok: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit normals (3, h, w) towards the camera from central differences at +-k, and where
    they are defined.
    """
    dx = shift(p, 0, k, 0.0) - shift(p, 0, -k, 0.0)
    dy = shift(p, k, 0, 0.0) - shift(p, -k, 0, 0.0)
    # the cross product by its components (linalg.cross over dim 0 took twice as long)
    n = torch.stack([dx[1] * dy[2] - dx[2] * dy[1], dx[2] * dy[0] - dx[0] * dy[2],
                     dx[0] * dy[1] - dx[1] * dy[0]])
    norm = (n * n).sum(0).sqrt()  # (linalg's norm over dim 0 is 10x slower here)
    good = ok & shift(ok, 0, k, False) & shift(ok, 0, -k, False) & \
        shift(ok, k, 0, False) & shift(ok, -k, 0, False) & (norm > 0)
    n = n / norm.clamp_min(1e-12)
    flip = (n * p).sum(0) > 0  # towards the camera (the origin)
    n = torch.where(flip[None], -n, n)
    return n, good


def fit_support(p: torch.Tensor, n: torch.Tensor, good: torch.Tensor, tol: float,
                generator: torch.Generator | None = None, hypotheses: int = 200,
                sample: int = 4000) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """The support plane (n (3,), d) with n . x + d >= 0 on the camera's side, its inlier
    mask over the grid and the depth noise measured on it (robust sigma of the inliers'
    distances, metres); None without a plane of at least 5 % of the points.
    """
    # the grid as (3, h*w) columns: hypotheses and samples gather only the cells they use
    # (gathering every valid cell into an (M, 3) array took a quarter of the fit)
    pf, nf = p.reshape(3, -1), n.reshape(3, -1)
    valid = torch.nonzero(good.flatten()).flatten()
    if valid.numel() < 50:
        return None
    dev = p.device
    cos_tol = math.cos(math.radians(20.0))

    def best_plane(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, float] | None:
        if idx.numel() < 50:
            return None
        sub = idx[torch.randint(idx.numel(), (min(sample, idx.numel()),), device=dev,
                                generator=generator)]
        tri = idx[torch.randint(idx.numel(), (hypotheses, 3), device=dev,
                                generator=generator)]
        a, b, c = (pf[:, tri[:, i]].T for i in range(3))
        hn = torch.linalg.cross(b - a, c - a, dim=1)
        ln = hn.norm(dim=1, keepdim=True)
        hn = hn / ln.clamp_min(1e-12)
        hd = -(hn * a).sum(1)
        sign = torch.where(hd < 0, -1.0, 1.0)  # camera (origin) on the positive side
        hn, hd = hn * sign[:, None], hd * sign
        ps, ns = pf[:, sub].T, nf[:, sub].T      # (S, 3)

        def scores(upto: int, cand: torch.Tensor) -> torch.Tensor:
            dist = (ps[:upto] @ hn[cand].T + hd[cand]).abs()               # (S, K)
            agree = (ns[:upto] @ hn[cand].T).abs() >= cos_tol
            score = ((dist <= tol) & agree).sum(0)
            return torch.where(ln[cand, 0] > 1e-9, score, torch.zeros_like(score))
        # preemptive scoring: every hypothesis on the first eighth of the sample, the best
        # eight on all of it (a sixth of the work; the same plane but where two are close)
        first = scores(max(1, sub.numel() // 8), torch.arange(hypotheses, device=dev))
        best = torch.topk(first, min(8, hypotheses)).indices
        score = scores(sub.numel(), best)
        k = int(best[int(torch.argmax(score))])
        score = torch.zeros(hypotheses, dtype=score.dtype, device=dev).index_copy(
            0, best, score)
        if int(score[k]) < 0.05 * sub.numel():
            return None
        # refine: least squares over the sample's inliers (twice)
        nn_, dd = hn[k], hd[k]
        for _ in range(2):
            inl = ((ps @ nn_ + dd).abs() <= tol) & ((ns @ nn_).abs() >= cos_tol)
            q = ps[inl]
            if q.shape[0] < 3:
                break
            ctr = q.mean(0)
            _, _, vh = torch.linalg.svd((q - ctr).double(), full_matrices=False)
            nn_ = vh[-1].float()
            dd = -(nn_ * ctr).sum()
            if dd < 0:
                nn_, dd = -nn_, -dd
        r = ps @ nn_ + dd
        inl = (r.abs() <= tol) & ((ns @ nn_).abs() >= cos_tol)
        sigma = float(1.4826 * r[inl].abs().median()) if bool(inl.any()) else 0.0
        return nn_, dd, int(inl.sum()) * idx.numel() // sub.numel(), sigma

    first = best_plane(valid)
    if first is None:
        return None
    pn, pd, count, sigma = first
    # a table above a floor: a parallel plane at least 0.3 m above the first, big enough
    # (an object's top on a table is lower or smaller)
    height = torch.einsum('chw,c->hw', p, pn) + pd
    second = best_plane(torch.nonzero((good & (height > 0.3)).flatten()).flatten())
    if second is not None:
        qn, qd, qcount, qsigma = second
        if float(qn @ pn) >= math.cos(math.radians(10.0)) and qcount >= 0.25 * count:
            pn, pd, sigma = qn, qd, qsigma
            height = torch.einsum('chw,c->hw', p, pn) + pd
    plane = torch.cat([pn, pd.reshape(1)])
    full = good & (height.abs() <= tol) & (torch.einsum('chw,c->hw', n, pn).abs() >= cos_tol)
    return plane, full, sigma
