//! Table 6: the motivating example (METHOD.md section 4), on the class the weaker model
//! handles worst.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use decomp_eval::report::{ComposeReport, VoteReport};
use serde_json::json;

use super::format::{fixed2, opt2};
use super::table4::setup;
use super::{Model, Run};

/// Table 6: the motivating example. The weak class's module replaced, removed, or
/// re-verified by the stronger model's module of the same class.
pub fn motivating(r: &Run) -> Result<()> {
    let Some(c) = setup(r)? else {
        return Ok(());
    };
    motivating_report(
        r,
        &c.weak,
        &c.strong,
        &c.files,
        &c.base_w,
        &c.base_s,
        &c.cw,
        &c.cs,
        &c.class_names,
    )
}

#[allow(clippy::too_many_arguments)]
fn motivating_report(
    r: &Run,
    weak: &Model,
    strong: &Model,
    files: &[PathBuf],
    base_w: &VoteReport,
    base_s: &VoteReport,
    cw: &ComposeReport,
    cs: &ComposeReport,
    names_: &[String],
) -> Result<()> {
    let k = names_.len();
    // The weak class: the lowest per-class accuracy of the weaker model's composed modules.
    let w = (0..k)
        .min_by(|&a, &b| base_w.per_class[a].total_cmp(&base_w.per_class[b]))
        .context("no classes")?;
    let all: Vec<String> = (0..k).map(|c| format!("0:{c}")).collect();
    let mut rep = all.clone();
    rep[w] = format!("1:{w}");
    let replace = r
        .vote(&format!("motivating-replace-{w}"), files, &rep)?
        .context("vote")?;
    let remove_pick: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|&(c, _)| c != w)
        .map(|(_, p)| p.clone())
        .collect();
    let remove = r
        .vote(&format!("motivating-remove-{w}"), files, &remove_pick)?
        .context("vote")?;
    let mut ver = all.clone();
    ver[w] = format!("0:{w}&1:{w}");
    let reverify = r
        .vote(&format!("motivating-reverify-{w}"), files, &ver)?
        .context("vote")?;
    if !r.reporting()? {
        return Ok(());
    }
    r.gate_compose(&format!("the weaker model {}", weak.arch), cw, k)?;
    r.gate_compose(&format!("the stronger model {}", strong.arch), cs, k)?;
    let n_all = base_w.n as f64;
    let n_w = base_w.per_class_n[w];
    // Removing a class: its images can no longer be classified correctly.
    let remove_all = remove.top1 * remove.n as f64 / n_all;
    let others = |v: &VoteReport| -> f64 {
        let (mut c, mut n) = (0.0, 0.0);
        for i in (0..k).filter(|&i| i != w) {
            let ni = v.per_class_n[i] as f64;
            c += v.per_class[i] * ni;
            n += ni;
        }
        c / n
    };
    let model_class = |c: &ComposeReport| c.model_per_class.as_ref().map_or(f64::NAN, |p| p[w]);
    let mut md = String::new();
    r.header(&mut md);
    let _ = writeln!(
        md,
        "The weak class is the class on which the composed modules of `{}` are least accurate: **{w} ({})**, \
         {:.1}% of its {n_w} test images. Three fixes, no retraining:\n\n\
         * **replace**: its module comes from `{}`;\n\
         * **remove**: compose the other {} modules (images of class {w} can then only be wrong; the other classes are \
           evaluated on their own images too);\n\
         * **re-verify**: the weak module votes \"mine\" only when the `{}` module of the same class agrees (the smaller \
           of the two margins), a second opinion before a sensitive label is given.\n",
        weak.arch,
        names_[w],
        base_w.per_class[w],
        strong.arch,
        k - 1,
        strong.arch
    );
    md.push_str("| composition | top-1 % (all test images) | top-5 % | weak class accuracy % | other classes accuracy % |\n|---|---|---|---|---|\n");
    let _ = writeln!(
        md,
        "| {} model | {} | {} | {:.2} | |",
        weak.arch,
        opt2(cw.accuracy.model_top1),
        opt2(cw.accuracy.model_top5),
        model_class(cw)
    );
    // Rows of compositions that were evaluated on every class: label, result.
    let row = |md: &mut String, label: String, r: &VoteReport| {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {:.2} | {:.2} |",
            fixed2(r.top1),
            fixed2(r.top5),
            r.per_class[w],
            others(r)
        );
    };
    row(&mut md, format!("{} modules", weak.arch), base_w);
    row(&mut md, format!("replace class {w}"), &replace);
    let _ = writeln!(
        md,
        "| remove class {w} | {remove_all:.2} | - | 0.00 | {:.2} |",
        remove.top1
    );
    row(&mut md, format!("re-verify class {w}"), &reverify);
    row(&mut md, format!("{} modules (donor)", strong.arch), base_s);
    let _ = writeln!(
        md,
        "| {} model (donor) | {} | {} | {:.2} | |",
        strong.arch,
        opt2(cs.accuracy.model_top1),
        opt2(cs.accuracy.model_top5),
        model_class(cs)
    );
    md.push_str(
        "\n## The paper's numbers\n\nThe paper's motivating example (Table 6) fixes a faulty class of a 202-class Tiny \
         ImageNet model (Tiny ImageNet plus person and gorilla): model 26.6 / 50.4 top-1 / top-5, composed modules 26.0 / \
         50.4; option 1, replace from a model trained 100 epochs longer: **27.2 / 54.6**; option 2, replace from a 2-class \
         model: 25.0 / 50.4; option 3, remove: 24.0 / 48.2; option 4, re-verify: 25.3 / 50.8. Top-1 change against the \
         model: +0.6, -1.6, -2.6, -1.3 points; against the composed modules: +1.2, -1.0, -2.0, -0.7 (METHOD.md \
         section 7). Here options 1, 3 and 4 run on CIFAR-10, on the class the weaker model handles worst.\n",
    );
    let csv = format!(
        "composition,top1,top5,weak_class_acc,others_acc\nweak_modules,{},{},{},{}\nreplace,{},{},{},{}\nremove,{remove_all},,0,{}\nreverify,{},{},{},{}\n",
        json!(base_w.top1),
        json!(base_w.top5),
        json!(base_w.per_class[w]),
        others(base_w),
        json!(replace.top1),
        json!(replace.top5),
        json!(replace.per_class[w]),
        others(&replace),
        json!(remove.top1),
        json!(reverify.top1),
        json!(reverify.top5),
        json!(reverify.per_class[w]),
        others(&reverify),
    );
    r.finish(&md, &json!({"weak_class": w, "weak_class_name": names_[w], "weak_modules": base_w, "strong_modules": base_s, "replace": replace, "remove": remove, "remove_top1_all_images": remove_all, "reverify": reverify, "weak_compose": cw}), &csv)?;
    let _ = n_w;
    Ok(())
}
