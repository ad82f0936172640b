//! Value parsers for flags: clap refuses a bad value with the flag named, before any work.

use decomp_data::Split;

/// A finite `f32` (`nan`, `inf` are refused).
pub fn finite_f32(s: &str) -> Result<f32, String> {
    let v: f32 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s}: expected a finite number"))
    }
}

/// A finite `f64` (`nan`, `inf` are refused).
pub fn finite_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s}: expected a finite number"))
    }
}

/// A finite `f64` above 0.
pub fn positive_f64(s: &str) -> Result<f64, String> {
    let v = finite_f64(s)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{s}: expected a number above 0"))
    }
}

/// A count of at least 1 (`--limit 0` would evaluate nothing).
pub fn positive_usize(s: &str) -> Result<usize, String> {
    let v: usize = s.trim().parse().map_err(|e| format!("{e}"))?;
    if v >= 1 {
        Ok(v)
    } else {
        Err("expected at least 1".into())
    }
}

/// `train` or `test` (`val` = test).
pub fn split(s: &str) -> Result<Split, String> {
    s.parse().map_err(|e: decomp_data::DataError| e.to_string())
}

/// Resolves class arguments (names or indices, as `--classes` takes them) against a list of
/// class names; duplicates are refused. `flag` names the flag in errors.
pub fn resolve_classes(
    flag: &str,
    given: &[String],
    names: &[String],
    count: usize,
) -> anyhow::Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::with_capacity(given.len());
    for g in given {
        let g = g.trim();
        let c = if let Ok(i) = g.parse::<usize>() {
            if i >= count {
                anyhow::bail!("{flag}: index {i} is out of range, there are {count} classes");
            }
            i
        } else if let Some(i) = names.iter().position(|n| n == g) {
            i
        } else {
            anyhow::bail!(
                "{flag}: no class named {g:?}, expected an index below {count} or one of: {}",
                names.join(", ")
            );
        };
        if out.contains(&c) {
            anyhow::bail!("{flag}: class {g} is listed twice");
        }
        out.push(c);
    }
    if out.is_empty() {
        anyhow::bail!("{flag}: no class given");
    }
    Ok(out)
}

/// Refuses a list with a repeated entry (`--variants mc-bln,mc-bln`).
pub fn no_duplicates(flag: &str, items: &[String]) -> anyhow::Result<()> {
    for (i, x) in items.iter().enumerate() {
        if items[..i].contains(x) {
            anyhow::bail!("{flag}: {x} is listed twice");
        }
    }
    if items.is_empty() {
        anyhow::bail!("{flag}: nothing given");
    }
    Ok(())
}
