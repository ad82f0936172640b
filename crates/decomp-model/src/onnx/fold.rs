//! Constant tensors and the folding of the shape arithmetic exporters emit around `Reshape`,
//! `Pad` and `Flatten` (`Shape`, `Gather`, `Unsqueeze`, `Concat`, `Slice`, `Transpose`,
//! `Cast`, `ConstantOfShape`, ...): every such op whose inputs are all constants is computed
//! here, so the graph that reaches the IR holds only the network's own ops.
//!
//! The batch size is unknown at import: `Shape` of a network value yields [`BATCH`] for the
//! batch axis, a marker that copies, gathers, slices and concatenations carry along and that
//! `Reshape` reads as "the batch axis". Arithmetic on it is refused.

/// The batch size in folded shape tensors.
pub(super) const BATCH: i64 = i64::MIN + 1;

/// Values of a constant tensor.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A constant tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Const {
    pub shape: Vec<usize>,
    pub data: Data,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Source positions of every element of an output of `shape`, in row-major order: the sum
/// over axes `d` of `offset(d, i)` for the element's index `i` along `d`.
fn walk(shape: &[usize], offset: impl Fn(usize, usize) -> usize) -> Vec<usize> {
    let n = numel(shape);
    let mut index = Vec::with_capacity(n);
    let mut pos = vec![0usize; shape.len()];
    for _ in 0..n {
        index.push(pos.iter().enumerate().map(|(d, &i)| offset(d, i)).sum());
        for d in (0..shape.len()).rev() {
            pos[d] += 1;
            if pos[d] < shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    index
}

/// Resolves a possibly negative axis against `rank` (`-1` is the last axis).
pub(super) fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}"))
    }
}

impl Const {
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Self {
        Self {
            shape,
            data: Data::F32(v),
        }
    }

    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Self {
        Self {
            shape,
            data: Data::I64(v),
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// Integer values (float constants are refused: shapes, axes and indices are integers).
    pub fn ints(&self) -> Result<&[i64], String> {
        match &self.data {
            Data::I64(v) => Ok(v),
            Data::F32(_) => Err("expected an integer tensor, found float values".into()),
        }
    }

    /// Float values; integers are converted (a `Clip` bound may be stored either way).
    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The single value of a scalar or one-element tensor.
    pub fn scalar_f32(&self) -> Result<f32, String> {
        match self.floats().as_slice() {
            [v] => Ok(*v),
            v => Err(format!("expected one value, found {}", v.len())),
        }
    }

    /// Elements at `index` (flat positions), in order.
    fn pick(&self, index: &[usize]) -> Data {
        match &self.data {
            Data::F32(v) => Data::F32(index.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(index.iter().map(|&i| v[i]).collect()),
        }
    }

    /// `Gather` along `axis` with integer `indices` (negative indices count from the end).
    pub fn gather(&self, indices: &Const, axis_attr: i64) -> Result<Const, String> {
        let ax = axis(axis_attr, self.shape.len())?;
        let dim = self.shape[ax] as i64;
        let idx: Vec<usize> = indices
            .ints()?
            .iter()
            .map(|&i| {
                let j = if i < 0 { i + dim } else { i };
                if (0..dim).contains(&j) {
                    Ok(j as usize)
                } else {
                    Err(format!("index {i} is out of range for an axis of {dim}"))
                }
            })
            .collect::<Result<_, _>>()?;
        let outer: usize = numel(&self.shape[..ax]);
        let inner: usize = numel(&self.shape[ax + 1..]);
        let mut flat = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in &idx {
                let base = (o * self.shape[ax] + i) * inner;
                flat.extend(base..base + inner);
            }
        }
        let mut shape = self.shape[..ax].to_vec();
        shape.extend(&indices.shape);
        shape.extend(&self.shape[ax + 1..]);
        Ok(Const {
            shape,
            data: self.pick(&flat),
        })
    }

    /// `Unsqueeze`: a 1 inserted at every axis of `axes` (axes of the output).
    pub fn unsqueeze(&self, axes: &[i64]) -> Result<Const, String> {
        let rank = self.shape.len() + axes.len();
        let mut at: Vec<usize> = axes
            .iter()
            .map(|&a| axis(a, rank))
            .collect::<Result<_, _>>()?;
        at.sort_unstable();
        at.dedup();
        if at.len() != axes.len() {
            return Err(format!("repeated axes {axes:?}"));
        }
        let mut dims = self.shape.iter();
        let shape = (0..rank)
            .map(|i| {
                if at.contains(&i) {
                    1
                } else {
                    *dims.next().unwrap_or(&1)
                }
            })
            .collect();
        Ok(Const {
            shape,
            data: self.data.clone(),
        })
    }

    /// `Squeeze` of `axes` (every axis of size 1 when empty).
    pub fn squeeze(&self, axes: &[i64]) -> Result<Const, String> {
        let rank = self.shape.len();
        let at: Vec<usize> = if axes.is_empty() {
            (0..rank).filter(|&i| self.shape[i] == 1).collect()
        } else {
            axes.iter()
                .map(|&a| axis(a, rank))
                .collect::<Result<_, _>>()?
        };
        if let Some(&a) = at.iter().find(|&&a| self.shape[a] != 1) {
            return Err(format!("axis {a} has size {}, not 1", self.shape[a]));
        }
        Ok(Const {
            shape: (0..rank)
                .filter(|i| !at.contains(i))
                .map(|i| self.shape[i])
                .collect(),
            data: self.data.clone(),
        })
    }

    /// `Concat` along `axis`.
    pub fn concat(parts: &[&Const], axis_attr: i64) -> Result<Const, String> {
        let first = parts.first().ok_or("no inputs")?;
        let ax = axis(axis_attr, first.shape.len())?;
        for p in parts {
            if p.shape.len() != first.shape.len()
                || p.shape[..ax] != first.shape[..ax]
                || p.shape[ax + 1..] != first.shape[ax + 1..]
            {
                return Err(format!(
                    "shapes {:?} and {:?} do not concatenate on axis {ax}",
                    first.shape, p.shape
                ));
            }
        }
        let outer = numel(&first.shape[..ax]);
        let mut shape = first.shape.clone();
        shape[ax] = parts.iter().map(|p| p.shape[ax]).sum();
        let ints = parts.iter().all(|p| matches!(p.data, Data::I64(_)));
        let floats = parts.iter().all(|p| matches!(p.data, Data::F32(_)));
        if !ints && !floats {
            return Err("inputs mix integer and float tensors".into());
        }
        let mut fv = Vec::new();
        let mut iv = Vec::new();
        for o in 0..outer {
            for p in parts {
                let chunk = numel(&p.shape[ax..]);
                match &p.data {
                    Data::F32(v) => fv.extend_from_slice(&v[o * chunk..(o + 1) * chunk]),
                    Data::I64(v) => iv.extend_from_slice(&v[o * chunk..(o + 1) * chunk]),
                }
            }
        }
        Ok(Const {
            shape,
            data: if ints { Data::I64(iv) } else { Data::F32(fv) },
        })
    }

    /// `Reshape` to `target` (0 copies the input dimension unless `allowzero`, one -1 is
    /// inferred).
    pub fn reshape(&self, target: &[i64], allowzero: bool) -> Result<Const, String> {
        let shape = resolve_shape(&self.shape, target, allowzero)?;
        Ok(Const {
            shape,
            data: self.data.clone(),
        })
    }

    /// `Transpose` by `perm` (reversed axes when empty).
    pub fn transpose(&self, perm: &[i64]) -> Result<Const, String> {
        let rank = self.shape.len();
        let perm: Vec<usize> = if perm.is_empty() {
            (0..rank).rev().collect()
        } else {
            perm.iter()
                .map(|&a| axis(a, rank))
                .collect::<Result<_, _>>()?
        };
        let mut seen = perm.clone();
        seen.sort_unstable();
        if seen != (0..rank).collect::<Vec<_>>() {
            return Err(format!("perm {perm:?} is not a permutation of {rank} axes"));
        }
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        let src = strides(&self.shape);
        let index = walk(&shape, |d, i| i * src[perm[d]]);
        Ok(Const {
            shape,
            data: self.pick(&index),
        })
    }

    /// `Slice` with ONNX's clamping rules (negative steps walk backwards).
    pub fn slice(
        &self,
        starts: &[i64],
        ends: &[i64],
        axes: Option<&[i64]>,
        steps: Option<&[i64]>,
    ) -> Result<Const, String> {
        let ranges = slice_ranges(&self.shape, starts, ends, axes, steps)?;
        let shape: Vec<usize> = ranges.iter().map(Vec::len).collect();
        let src = strides(&self.shape);
        let index = walk(&shape, |d, i| ranges[d][i] * src[d]);
        Ok(Const {
            shape,
            data: self.pick(&index),
        })
    }

    /// `Cast` to ONNX data type `to` (1 float, 6 int32, 7 int64).
    pub fn cast(&self, to: i64) -> Result<Const, String> {
        let data = match (to, &self.data) {
            (1, Data::F32(v)) => Data::F32(v.clone()),
            (1, Data::I64(v)) => {
                if v.contains(&BATCH) {
                    return Err("casts the batch size to float".into());
                }
                Data::F32(v.iter().map(|&x| x as f32).collect())
            }
            (6 | 7, Data::I64(v)) => Data::I64(v.clone()),
            (6 | 7, Data::F32(v)) => Data::I64(v.iter().map(|&x| x as i64).collect()),
            (t, _) => return Err(format!("cast to data type {t} is not supported")),
        };
        Ok(Const {
            shape: self.shape.clone(),
            data,
        })
    }

    /// Element-wise `Add`/`Sub`/`Mul`/`Div` of two constants of one shape, or one of them a
    /// single value.
    pub fn arith(&self, other: &Const, op: &str) -> Result<Const, String> {
        let shape = if self.len() == 1 {
            other.shape.clone()
        } else if other.len() == 1 || self.shape == other.shape {
            self.shape.clone()
        } else {
            return Err(format!(
                "shapes {:?} and {:?}: only equal shapes or a single value broadcast",
                self.shape, other.shape
            ));
        };
        let n = numel(&shape);
        let at = |len: usize, i: usize| if len == 1 { 0 } else { i };
        match (&self.data, &other.data) {
            (Data::I64(a), Data::I64(b)) => {
                if a.contains(&BATCH) || b.contains(&BATCH) {
                    return Err("arithmetic on the batch size".into());
                }
                let v = (0..n)
                    .map(|i| {
                        let (x, y) = (a[at(a.len(), i)], b[at(b.len(), i)]);
                        match op {
                            "Add" => x.checked_add(y),
                            "Sub" => x.checked_sub(y),
                            "Mul" => x.checked_mul(y),
                            _ => x.checked_div(y),
                        }
                        .ok_or_else(|| format!("{x} {op} {y} overflows or divides by zero"))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Const::i64(shape, v))
            }
            (Data::F32(a), Data::F32(b)) => {
                let v = (0..n)
                    .map(|i| {
                        let (x, y) = (a[at(a.len(), i)], b[at(b.len(), i)]);
                        match op {
                            "Add" => x + y,
                            "Sub" => x - y,
                            "Mul" => x * y,
                            _ => x / y,
                        }
                    })
                    .collect();
                Ok(Const::f32(shape, v))
            }
            _ => Err("mixes integer and float tensors".into()),
        }
    }
}

/// Output shape of a `Reshape` of `input` to `target`.
pub(super) fn resolve_shape(
    input: &[usize],
    target: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, String> {
    let total = numel(input);
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| {
                format!(
                    "target {target:?} copies axis {i}, the input has rank {}",
                    input.len()
                )
            })?),
            t if t >= 0 => out.push(t as usize),
            _ => return Err(format!("target shape {target:?} is not a valid reshape")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {target:?}"));
        }
        out[i] = total / known;
    }
    if numel(&out) != total {
        return Err(format!(
            "cannot reshape {input:?} ({total} values) to {target:?}"
        ));
    }
    Ok(out)
}

/// Per axis, the source indices a `Slice` keeps.
pub(super) fn slice_ranges(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Vec<Vec<usize>>, String> {
    let rank = shape.len();
    let default_axes: Vec<i64> = (0..starts.len() as i64).collect();
    let axes = axes.unwrap_or(&default_axes);
    if ends.len() != starts.len() || axes.len() != starts.len() {
        return Err(format!(
            "{} starts, {} ends and {} axes: expected one of each per sliced axis",
            starts.len(),
            ends.len(),
            axes.len()
        ));
    }
    if steps.is_some_and(|s| s.len() != starts.len()) {
        return Err("one step per sliced axis expected".into());
    }
    let mut ranges: Vec<Vec<usize>> = shape.iter().map(|&d| (0..d).collect()).collect();
    for (k, &a) in axes.iter().enumerate() {
        let ax = axis(a, rank)?;
        let dim = shape[ax] as i64;
        let step = steps.map_or(1, |s| s[k]);
        if step == 0 {
            return Err("slice step 0".into());
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (s, e) = (norm(starts[k]), norm(ends[k]));
        let mut idx = Vec::new();
        if step > 0 {
            let (mut i, e) = (s.clamp(0, dim), e.clamp(0, dim));
            while i < e {
                idx.push(i as usize);
                i += step;
            }
        } else {
            let (mut i, e) = (s.clamp(-1, dim - 1), e.clamp(-1, dim - 1));
            while i > e {
                idx.push(i as usize);
                i += step;
            }
        }
        ranges[ax] = idx;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_of_torch_f_pad_fold_to_channel_pads() {
        // F.pad(x, (0, 0, 0, 0, 8, 8)) as the TorchScript exporter writes it: the pads list
        // padded with zeros to 2 * rank, reshaped to pairs, reversed, transposed, flattened.
        let pads = Const::i64(vec![6], vec![0, 0, 0, 0, 8, 8]);
        let zeros = Const::i64(vec![2], vec![0, 0]);
        let all = Const::concat(&[&pads, &zeros], 0).unwrap();
        let pairs = all.reshape(&[-1, 2], false).unwrap();
        let rev = pairs
            .slice(&[-1], &[-i64::MAX], Some(&[0]), Some(&[-1]))
            .unwrap();
        let t = rev.transpose(&[1, 0]).unwrap();
        let flat = t.reshape(&[-1], false).unwrap().cast(7).unwrap();
        assert_eq!(flat.ints().unwrap(), &[0, 8, 0, 0, 0, 8, 0, 0]);
    }

    #[test]
    fn batch_marker_survives_gather_unsqueeze_concat() {
        let shape = Const::i64(vec![4], vec![BATCH, 64, 1, 1]);
        let n = shape.gather(&Const::i64(vec![], vec![0]), 0).unwrap();
        assert_eq!(n.shape, Vec::<usize>::new());
        let n = n.unsqueeze(&[0]).unwrap();
        let target = Const::concat(&[&n, &Const::i64(vec![1], vec![-1])], 0).unwrap();
        assert_eq!(target.ints().unwrap(), &[BATCH, -1]);
        assert!(n.arith(&Const::i64(vec![], vec![2]), "Mul").is_err());
    }

    #[test]
    fn gather_and_slice_follow_onnx() {
        let t = Const::i64(vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        let g = t.gather(&Const::i64(vec![2], vec![2, -3]), 1).unwrap();
        assert_eq!(
            (g.shape.clone(), g.ints().unwrap()),
            (vec![2, 2], &[3, 1, 6, 4][..])
        );
        let s = t
            .slice(&[0, 1], &[i64::MAX, 3], None, Some(&[1, 1]))
            .unwrap();
        assert_eq!(s.ints().unwrap(), &[2, 3, 5, 6]);
        assert!(resolve_shape(&[2, 3], &[4, -1], false).is_err());
        assert_eq!(
            resolve_shape(&[2, 3, 1], &[0, -1], false).unwrap(),
            vec![2, 3]
        );
    }
}
