//! Running a [`CpuPlan`]: tiles of images in parallel, probes (captures, masks, activity
//! bits), module branches, and every op but convolutions.

use super::*;

impl CpuPlan {
    /// Image batch (`[batch, c, h, w]` channel-first) split into tiles.
    pub(super) fn tiles<'a>(&self, x: &'a [f32], batch: usize) -> Vec<(usize, &'a [f32])> {
        let per = numel(&self.shapes[0]);
        let tile = self.tuning.tile.max(1);
        (0..batch)
            .step_by(tile)
            .map(|start| {
                let n = tile.min(batch - start);
                (n, &x[start * per..(start + n) * per])
            })
            .collect()
    }

    /// Logits `[batch * classes]` and captured node outputs `[batch * positions]`, both
    /// channel-first.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        batch: usize,
        capture: &[NodeId],
        masks: Option<&HostMasks>,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let parts: Vec<(Vec<f32>, Vec<Vec<f32>>)> = self
            .tiles(x, batch)
            .into_par_iter()
            .map(|(n, xs)| {
                let mut caps: Vec<Vec<f32>> = capture
                    .iter()
                    .map(|&c| vec![0.0; n * numel(&self.shapes[c])])
                    .collect();
                let logits = self.run_tile(xs, n, self.output, masks, &mut |id, v| {
                    for (slot, _) in caps.iter_mut().zip(capture).filter(|(_, c)| **c == id) {
                        let shape = &self.shapes[id];
                        let per = numel(shape);
                        for (src, dst) in v.chunks_exact(per).zip(slot.chunks_exact_mut(per)) {
                            to_ir(shape, src, dst);
                        }
                    }
                });
                (self.out_to_ir(logits), caps)
            })
            .collect();
        let mut logits = Vec::new();
        let mut caps: Vec<Vec<f32>> = vec![Vec::new(); capture.len()];
        for (l, c) in parts {
            logits.extend(l);
            for (all, part) in caps.iter_mut().zip(c) {
                all.extend(part);
            }
        }
        (logits, caps)
    }

    pub(super) fn out_to_ir(&self, v: Vec<f32>) -> Vec<f32> {
        let shape = &self.shapes[self.output];
        let per = numel(shape);
        let mut out = vec![0.0; v.len()];
        for (src, dst) in v.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
            to_ir(shape, src, dst);
        }
        out
    }

    /// Logits (channel-first, `[batch * classes]`) and, per site, one bit per image and
    /// position (`> 0`), in storage order: `[batch * words]` with `words = positions / 64`
    /// rounded up.
    pub(crate) fn forward_active(
        &self,
        x: &[f32],
        batch: usize,
        sites: &[NodeId],
    ) -> (Vec<f32>, Vec<Vec<u64>>) {
        let words: Vec<usize> = sites
            .iter()
            .map(|&s| numel(&self.shapes[s]).div_ceil(64))
            .collect();
        let parts: Vec<(Vec<f32>, Vec<Vec<u64>>)> = self
            .tiles(x, batch)
            .into_par_iter()
            .map(|(n, xs)| {
                let mut bits: Vec<Vec<u64>> = words.iter().map(|&w| vec![0u64; n * w]).collect();
                let logits = self.run_tile(xs, n, self.output, None, &mut |id, v| {
                    for ((slot, _), &w) in bits
                        .iter_mut()
                        .zip(sites)
                        .zip(&words)
                        .filter(|((_, s), _)| **s == id)
                    {
                        let per = numel(&self.shapes[id]);
                        for (img, dst) in v.chunks_exact(per).zip(slot.chunks_exact_mut(w)) {
                            for (word, chunk) in dst.iter_mut().zip(img.chunks(64)) {
                                let mut acc = 0u64;
                                for (b, &x) in chunk.iter().enumerate() {
                                    acc |= u64::from(x > 0.0) << b;
                                }
                                *word = acc;
                            }
                        }
                    }
                });
                (self.out_to_ir(logits), bits)
            })
            .collect();
        let mut logits = Vec::new();
        let mut bits: Vec<Vec<u64>> = vec![Vec::new(); sites.len()];
        for (l, b) in parts {
            logits.extend(l);
            for (all, part) in bits.iter_mut().zip(b) {
                all.extend(part);
            }
        }
        (logits, bits)
    }

    /// Adds the storage-order bits of the chosen rows (`None`: all; rows below `batch`) to
    /// the channel-first `counts`.
    pub(crate) fn count_bits(
        &self,
        sites: &[NodeId],
        bits: &[Vec<u64>],
        batch: usize,
        rows: Option<&[usize]>,
        counts: &mut ActivityCounts,
    ) {
        let all: Vec<usize>;
        let rows = match rows {
            Some(r) => r,
            None => {
                all = (0..batch).collect();
                &all
            }
        };
        for ((&site, b), acc) in sites.iter().zip(bits).zip(counts.counts.iter_mut()) {
            let shape = &self.shapes[site];
            let w = numel(shape).div_ceil(64);
            let mut here = vec![0u32; w * 64];
            for &r in rows {
                for (wi, &word) in b[r * w..(r + 1) * w].iter().enumerate() {
                    let mut word = word;
                    while word != 0 {
                        here[wi * 64 + word.trailing_zeros() as usize] += 1;
                        word &= word - 1;
                    }
                }
            }
            for (pos, &n) in here.iter().enumerate().filter(|(_, n)| **n > 0) {
                acc[ir_index(shape, pos)] += n;
            }
        }
        counts.images += rows.len();
    }

    /// Output of `node` for every module (channel-first `[batch * positions]` each), one
    /// branching pass per image (see `Executor::forward_modules`).
    pub(crate) fn forward_modules(
        &self,
        x: &[f32],
        batch: usize,
        masks: &HostModuleMasks,
        node: NodeId,
        modules: usize,
    ) -> Vec<Vec<f32>> {
        let per_in = numel(&self.shapes[0]);
        let branches: Vec<Vec<(u64, Vec<f32>)>> = (0..batch)
            .into_par_iter()
            .map(|i| self.run_branches(&x[i * per_in..(i + 1) * per_in], masks, node))
            .collect();
        let shape = &self.shapes[node];
        let per = numel(shape);
        let mut result = vec![vec![0.0f32; batch * per]; modules];
        let mut ir = vec![0.0f32; per];
        for (img, bs) in branches.iter().enumerate() {
            for (set, v) in bs {
                to_ir(shape, v, &mut ir);
                for (m, out) in result.iter_mut().enumerate() {
                    if set >> m & 1 == 1 {
                        out[img * per..(img + 1) * per].copy_from_slice(&ir);
                    }
                }
            }
        }
        result
    }

    /// Runs nodes `0..=stop` on one tile of `n` images; returns `stop`'s value. `on_value` sees
    /// every materialized node's value (after its mask).
    pub(super) fn run_tile(
        &self,
        x: &[f32],
        n: usize,
        stop: NodeId,
        masks: Option<&HostMasks>,
        on_value: &mut dyn FnMut(NodeId, &[f32]),
    ) -> Vec<f32> {
        let mut values: Vec<Option<Vec<f32>>> = vec![None; self.nodes.len()];
        let mut scratch = Vec::new();
        for id in 0..=stop {
            let node = &self.nodes[id];
            let mut v = match node.op {
                POp::Folded => continue,
                POp::Input => {
                    let shape = &self.shapes[0];
                    let per = numel(shape);
                    let mut v = vec![0.0; n * per];
                    for (src, dst) in x.chunks_exact(per).zip(v.chunks_exact_mut(per)) {
                        to_storage(shape, src, dst);
                    }
                    v
                }
                _ => {
                    let ins = &node.inputs;
                    let mut owned: Vec<Option<Vec<f32>>> = ins
                        .iter()
                        .enumerate()
                        .map(|(k, &i)| {
                            if self.last_use[i] == id
                                && !ins[..k].contains(&i)
                                && !ins[k + 1..].contains(&i)
                            {
                                values[i].take()
                            } else {
                                None
                            }
                        })
                        .collect();
                    let args: Vec<Arg<'_>> = ins
                        .iter()
                        .zip(owned.iter_mut())
                        .map(|(&i, o)| match o.take() {
                            Some(v) => Arg::Owned(v),
                            None => Arg::Borrowed(
                                values[i]
                                    .as_deref()
                                    .expect("validated graph: inputs computed before use"),
                            ),
                        })
                        .collect();
                    self.apply(id, args, n, &mut scratch)
                }
            };
            if let Some(k) = masks.and_then(|m| m.keep.get(&id)) {
                for img in v.chunks_exact_mut(k.len()) {
                    for (a, b) in img.iter_mut().zip(k) {
                        *a *= b;
                    }
                }
            }
            on_value(id, &v);
            for &i in &node.inputs {
                if self.last_use[i] == id {
                    values[i] = None;
                }
            }
            values[id] = Some(v);
        }
        values[stop].take().expect("stop node computed")
    }

    /// Runs nodes `0..=stop` on one image for all modules at once; returns `stop`'s value per
    /// set of modules sharing it.
    pub(super) fn run_branches(
        &self,
        x: &[f32],
        masks: &HostModuleMasks,
        stop: NodeId,
    ) -> Vec<(u64, Vec<f32>)> {
        type Branches = Vec<(u64, Vec<f32>)>;
        let mut values: Vec<Option<Branches>> = vec![None; self.nodes.len()];
        let mut scratch = Vec::new();
        for id in 0..=stop {
            let node = &self.nodes[id];
            let mut branches: Branches = match node.op {
                POp::Folded => continue,
                POp::Input => {
                    let mut v = vec![0.0; x.len()];
                    to_storage(&self.shapes[0], x, &mut v);
                    vec![(masks.all, v)]
                }
                _ => match node.inputs.as_slice() {
                    &[i] => {
                        if self.last_use[i] == id {
                            values[i]
                                .take()
                                .expect("inputs computed before use")
                                .into_iter()
                                .map(|(set, v)| {
                                    (set, self.apply(id, vec![Arg::Owned(v)], 1, &mut scratch))
                                })
                                .collect()
                        } else {
                            values[i]
                                .as_ref()
                                .expect("inputs computed before use")
                                .iter()
                                .map(|(set, v)| {
                                    (
                                        *set,
                                        self.apply(id, vec![Arg::Borrowed(v)], 1, &mut scratch),
                                    )
                                })
                                .collect()
                        }
                    }
                    ins => {
                        // Multi-input op: one output per combination of input branches (one
                        // of each input) sharing a module.
                        let inputs: Vec<&Branches> = ins
                            .iter()
                            .map(|&i| values[i].as_ref().expect("inputs computed before use"))
                            .collect();
                        let mut combos: Vec<(u64, Vec<&[f32]>)> = inputs[0]
                            .iter()
                            .map(|(set, v)| (*set, vec![v.as_slice()]))
                            .collect();
                        for branches in &inputs[1..] {
                            let mut next = Vec::new();
                            for (set, vs) in &combos {
                                for (sb, vb) in branches.iter() {
                                    if set & sb != 0 {
                                        let mut vs = vs.clone();
                                        vs.push(vb.as_slice());
                                        next.push((set & sb, vs));
                                    }
                                }
                            }
                            combos = next;
                        }
                        combos
                            .into_iter()
                            .map(|(set, vs)| {
                                let args = vs.into_iter().map(Arg::Borrowed).collect();
                                (set, self.apply(id, args, 1, &mut scratch))
                            })
                            .collect()
                    }
                },
            };
            if let Some(distinct) = masks.by_node.get(&id) {
                let mut out = Vec::with_capacity(branches.len());
                for (mut members, v) in branches {
                    for (set, zeroed) in distinct {
                        if members & set == 0 {
                            continue;
                        }
                        let changes =
                            !masks.relu_fed[id] || zeroed.iter().any(|&s| v[s as usize] > 0.0);
                        if !changes {
                            continue;
                        }
                        let mut masked = v.clone();
                        for &s in zeroed {
                            masked[s as usize] = 0.0;
                        }
                        out.push((members & set, masked));
                        members &= !set;
                    }
                    if members != 0 {
                        out.push((members, v));
                    }
                }
                branches = out;
            }
            for &i in &node.inputs {
                if self.last_use[i] == id {
                    values[i] = None;
                }
            }
            values[id] = Some(branches);
        }
        values[stop].take().expect("stop node computed")
    }

    /// Applies node `id`'s op to `n` images of argument values in storage order.
    pub(super) fn apply(
        &self,
        id: NodeId,
        args: Vec<Arg<'_>>,
        n: usize,
        scratch: &mut Vec<f32>,
    ) -> Vec<f32> {
        if let POp::Concat = self.nodes[id].op {
            return self.concat(id, &args, n);
        }
        let mut args = args.into_iter();
        let mut arg = || args.next().expect("arity checked by validation");
        let in_shape = |k: usize| &self.shapes[self.nodes[id].inputs[k]];
        match &self.nodes[id].op {
            POp::Input | POp::Folded => unreachable!("input and folded nodes are not applied"),
            POp::Conv(c) => match &c.wino {
                Some(u) if self.tuning.winograd => {
                    self.winograd(c, u, arg().as_slice(), n, scratch)
                }
                _ => self.conv(c, arg().as_slice(), n, scratch),
            },
            POp::Affine { scale, shift } => {
                let mut v = arg().into_owned();
                let c = scale.len();
                for px in v.chunks_exact_mut(c) {
                    for ((x, s), b) in px.iter_mut().zip(scale).zip(shift) {
                        *x = *x * s + b;
                    }
                }
                v
            }
            POp::Relu => {
                let mut v = arg().into_owned();
                for x in &mut v {
                    *x = x.max(0.0);
                }
                v
            }
            POp::Clip { min, max } => {
                let mut v = arg().into_owned();
                for x in &mut v {
                    *x = x.clamp(*min, *max);
                }
                v
            }
            POp::Concat => unreachable!("concatenation is applied above"),
            POp::Grouped(g) => self.grouped(g, arg().as_slice(), n, scratch),
            POp::Add => {
                let (a, b) = (arg(), arg());
                let (mut acc, other) = match (a, b) {
                    (Arg::Owned(a), b) => (a, b),
                    (a, Arg::Owned(b)) => (b, a),
                    (a, b) => (a.into_owned(), b),
                };
                for (x, y) in acc.iter_mut().zip(other.as_slice()) {
                    *x += y;
                }
                if self.recycle
                    && let Arg::Owned(v) = other
                {
                    super::pool::give(v);
                }
                acc
            }
            POp::Pool {
                max,
                kernel,
                stride,
                pad,
            } => {
                let [c, h, w] = chw(in_shape(0));
                let [_, ho, wo] = chw(&self.shapes[id]);
                let x = arg();
                let x = x.as_slice();
                let mut out = super::pool::take_zeroed(n * ho * wo * c);
                let mut acc = vec![0.0f32; c];
                for img in 0..n {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            acc.fill(if *max { f32::NEG_INFINITY } else { 0.0 });
                            for ky in 0..kernel[0] {
                                let Some(iy) =
                                    (oy * stride[0] + ky).checked_sub(pad[0]).filter(|&y| y < h)
                                else {
                                    continue;
                                };
                                for kx in 0..kernel[1] {
                                    let Some(ix) = (ox * stride[1] + kx)
                                        .checked_sub(pad[1])
                                        .filter(|&x| x < w)
                                    else {
                                        continue;
                                    };
                                    let px = &x[((img * h + iy) * w + ix) * c..][..c];
                                    for (a, &v) in acc.iter_mut().zip(px) {
                                        *a = if *max { a.max(v) } else { *a + v };
                                    }
                                }
                            }
                            let dst = &mut out[((img * ho + oy) * wo + ox) * c..][..c];
                            if *max {
                                dst.copy_from_slice(&acc);
                            } else {
                                // Padding counts (burn's `count_include_pad` default).
                                let area = (kernel[0] * kernel[1]) as f32;
                                for (d, a) in dst.iter_mut().zip(&acc) {
                                    *d = a / area;
                                }
                            }
                        }
                    }
                }
                out
            }
            POp::GlobalAvgPool => {
                let [c, h, w] = chw(in_shape(0));
                let x = arg();
                let mut out = super::pool::take_zeroed(n * c);
                for (img, dst) in x
                    .as_slice()
                    .chunks_exact(h * w * c)
                    .zip(out.chunks_exact_mut(c))
                {
                    for px in img.chunks_exact(c) {
                        for (d, v) in dst.iter_mut().zip(px) {
                            *d += v;
                        }
                    }
                    for d in dst.iter_mut() {
                        *d /= (h * w) as f32;
                    }
                }
                out
            }
            POp::Flatten => {
                let shape = in_shape(0);
                let x = arg();
                let [_, h, w] = chw(shape);
                if h * w == 1 {
                    return x.into_owned();
                }
                let per = numel(shape);
                let mut out = super::pool::take_zeroed(n * per);
                for (src, dst) in x
                    .as_slice()
                    .chunks_exact(per)
                    .zip(out.chunks_exact_mut(per))
                {
                    to_ir(shape, src, dst);
                }
                out
            }
            POp::Linear { w, bias, out } => {
                let x = arg();
                let inp = w.len() / out;
                let mut y = repeat_rows(bias, n);
                let g = Gemm {
                    m: n,
                    n: *out,
                    k: inp,
                    lhs_rs: inp,
                    rhs_rs: *out,
                    dst_rs: *out,
                };
                sgemm(g, &mut y, x.as_slice(), w, true)
                    .expect("linear shapes checked by validation");
                y
            }
            POp::ShortcutA { stride, pad_before } => {
                let [c, h, w] = chw(in_shape(0));
                let [co, ho, wo] = chw(&self.shapes[id]);
                let x = arg();
                let x = x.as_slice();
                let mut out = super::pool::take_zeroed(n * ho * wo * co);
                for img in 0..n {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let src = &x[((img * h + oy * stride) * w + ox * stride) * c..][..c];
                            out[((img * ho + oy) * wo + ox) * co + pad_before..][..c]
                                .copy_from_slice(src);
                        }
                    }
                }
                out
            }
            POp::BiasMap { map } => {
                let mut v = arg().into_owned();
                for img in v.chunks_exact_mut(map.len()) {
                    for (x, b) in img.iter_mut().zip(map) {
                        *x += b;
                    }
                }
                v
            }
            POp::Gather {
                stride,
                sources,
                fill,
            } => {
                let [c, h, w] = chw(in_shape(0));
                let [co, ho, wo] = chw(&self.shapes[id]);
                let x = arg();
                let x = x.as_slice();
                let mut out = super::pool::take_zeroed(n * ho * wo * co);
                for img in 0..n {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let src = &x[((img * h + oy * stride) * w + ox * stride) * c..][..c];
                            let dst = &mut out[((img * ho + oy) * wo + ox) * co..][..co];
                            for ((d, s), f) in dst.iter_mut().zip(sources).zip(fill) {
                                *d = s.map_or(*f, |s| src[s]);
                            }
                        }
                    }
                }
                out
            }
        }
    }
}

impl CpuPlan {
    /// Channel concatenation of `n` images in storage order: per pixel, each input's
    /// channel vector in input order.
    fn concat(&self, id: NodeId, args: &[Arg<'_>], n: usize) -> Vec<f32> {
        let [co, h, w] = chw(&self.shapes[id]);
        let pixels = n * h * w;
        let mut out = super::pool::take_zeroed(pixels * co);
        let mut offset = 0;
        for (&i, a) in self.nodes[id].inputs.iter().zip(args) {
            let c = chw(&self.shapes[i])[0];
            for (src, dst) in a.as_slice().chunks_exact(c).zip(out.chunks_exact_mut(co)) {
                dst[offset..offset + c].copy_from_slice(src);
            }
            offset += c;
        }
        out
    }
}
