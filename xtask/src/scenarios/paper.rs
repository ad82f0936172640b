//! The paper's published numbers the scenario reports print beside ours, and how a report
//! says whether our difference goes the paper's way.

use super::format::with_interval;
use crate::stats::Interval;

/// The paper's Table 1 (MC-BLN, its models without BatchNorm, the original test sets):
/// dataset, model, model top-1, top-5, modules top-1, top-5, JI (METHOD.md section 7).
pub const PAPER_TABLE1: [(&str, &str, f64, f64, f64, f64, f64); 9] = [
    ("CIFAR-10", "resnet20", 87.1, 99.5, 87.0, 99.4, 0.75),
    ("CIFAR-10", "resnet32", 85.3, 99.2, 78.6, 98.1, 0.51),
    ("CIFAR-10", "resnet56", 86.7, 99.4, 84.5, 98.9, 0.41),
    ("CIFAR-100", "resnet20", 46.3, 75.2, 45.6, 75.4, 0.63),
    ("CIFAR-100", "resnet32", 44.5, 74.6, 41.2, 71.0, 0.52),
    ("CIFAR-100", "resnet56", 45.7, 75.1, 44.9, 74.5, 0.68),
    ("TinyImageNet", "resnet20", 33.2, 59.7, 32.6, 59.7, 0.75),
    ("TinyImageNet", "resnet32", 31.8, 58.6, 31.5, 58.0, 0.72),
    ("TinyImageNet", "resnet56", 32.1, 58.7, 31.0, 57.8, 0.71),
];

/// The paper's Table 2 (intra-dataset reuse, 6 pairs of 4 classes per dataset, METHOD.md
/// section 7): one row per dataset.
pub struct PaperTable2 {
    /// The paper's name of the dataset.
    pub dataset: &'static str,
    /// decomp's dataset names whose rows this row stands beside (`tiny-imagenet`: the
    /// 20-class subset stands in for the paper's 200 classes).
    pub ours: &'static [&'static str],
    /// The architecture of the reused modules and of the TMA.
    pub arch: &'static str,
    /// Mean MA - TMA over the 6 pairs, in points.
    pub delta: f64,
    /// Per pair, (MA, TMA) top-1 %, where the paper's text gives them.
    pub pairs: &'static [(f64, f64)],
}

pub const PAPER_TABLE2: [PaperTable2; 3] = [
    PaperTable2 {
        dataset: "CIFAR-10",
        ours: &["cifar10"],
        arch: "resnet56",
        delta: 6.6,
        pairs: &[
            (98.8, 95.4),
            (91.4, 84.7),
            (96.6, 91.9),
            (99.3, 93.2),
            (99.3, 92.2),
            (92.9, 81.2),
        ],
    },
    PaperTable2 {
        dataset: "CIFAR-100",
        ours: &["cifar100"],
        arch: "resnet20",
        delta: -0.67,
        pairs: &[],
    },
    PaperTable2 {
        dataset: "ImageNet-200",
        ours: &["tiny-imagenet"],
        arch: "resnet20",
        delta: 1.5,
        pairs: &[],
    },
];

/// The paper's mean MA - TMA over its three datasets.
pub const PAPER_TABLE2_MEAN: f64 = 2.5;

/// The paper's Table 3 (inter-dataset reuse, 16 pairs of a CIFAR-10 and a CIFAR-100 class,
/// METHOD.md section 7): mean top-1 % over the pairs, and the differences it reports.
pub struct PaperTable3 {
    pub tma: f64,
    pub ma: f64,
    pub mma: f64,
    /// TMA - MA (without continuous learning), points.
    pub tma_minus_ma: f64,
    /// TMA - MMA (with continuous learning), points.
    pub tma_minus_mma: f64,
}

pub const PAPER_TABLE3: PaperTable3 = PaperTable3 {
    tma: 97.42,
    ma: 84.71,
    mma: 89.79,
    tma_minus_ma: 12.7,
    tma_minus_mma: 7.6,
};

/// The paper's Table 5 (inter-dataset replace, 16 cases, METHOD.md section 7): the composed
/// modules D minus the model M trained on the new task, mean top-1 and top-5 points.
pub const PAPER_TABLE5_D_MINUS_M: (f64, f64) = (2.55, -7.06);

/// The paper's Table 4 (intra-dataset replace, METHOD.md section 7): the mean change of the
/// composed top-1 when one module of its ResNet-32 is replaced by its ResNet-20's, on
/// CIFAR-10, in points.
pub const PAPER_TABLE4_C10_MEAN: f64 = 1.4;

/// The paper's Table 6 (METHOD.md section 7): each option's top-1 change against its composed
/// modules, in points.
pub const PAPER_TABLE6_VS_COMPOSED: [(&str, f64); 4] = [
    ("replace", 1.2),
    ("pair", -1.0),
    ("remove", -2.0),
    ("reverify", -0.7),
];

/// How a report names the two sides of a difference `pos - neg` when it compares its
/// direction with the paper's.
pub struct Direction<'a> {
    /// `pos` ahead of `neg` beyond doubt ("the modules beat the TMA").
    pub pos_wins: &'a str,
    /// `neg` ahead of `pos` beyond doubt ("the TMA beats the modules").
    pub neg_wins: &'a str,
    /// The paper's sign, positive ("the modules ahead") and negative ("the TMA ahead").
    pub pos_ahead: &'a str,
    pub neg_ahead: &'a str,
}

/// `+0.56 [+0.27, +0.84] against the paper's +1.2: <verdict>`: our difference with its
/// interval beside the paper's number (at least one decimal) and [`verdict`] on their
/// directions, the sentence every scenario report ends with.
pub fn against_paper(ci: &Interval, paper: f64, d: &Direction) -> String {
    let p = format!("{paper:+}");
    let p = if p.contains('.') { p } else { format!("{p}.0") };
    format!(
        "{} against the paper's {p}: {}",
        with_interval(ci.diff, Some(ci)),
        verdict(ci, paper, d)
    )
}

/// Whether our difference (its 95% interval `ci`) agrees with the direction of the paper's
/// `paper` (same sign convention): decided only when the interval excludes 0.
pub fn verdict(ci: &Interval, paper: f64, d: &Direction) -> String {
    let paper_sign = if paper > 0.0 {
        d.pos_ahead
    } else {
        d.neg_ahead
    };
    if ci.lo > 0.0 {
        if paper > 0.0 {
            format!("{}, the paper's direction", d.pos_wins)
        } else {
            format!(
                "{}, against the paper's direction ({paper_sign})",
                d.pos_wins
            )
        }
    } else if ci.hi < 0.0 {
        if paper < 0.0 {
            format!("{}, the paper's direction", d.neg_wins)
        } else {
            format!(
                "{}, against the paper's direction ({paper_sign})",
                d.neg_wins
            )
        }
    } else {
        format!(
            "the interval includes 0, so these images do not settle the direction (the paper: {paper_sign})"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_needs_the_interval_to_exclude_zero() {
        let d = Direction {
            pos_wins: "P wins",
            neg_wins: "N wins",
            pos_ahead: "P ahead",
            neg_ahead: "N ahead",
        };
        let ci = |lo, hi| Interval {
            diff: (lo + hi) / 2.0,
            lo,
            hi,
        };
        assert_eq!(
            verdict(&ci(1.0, 3.0), 12.7, &d),
            "P wins, the paper's direction"
        );
        assert_eq!(
            verdict(&ci(1.0, 3.0), -7.06, &d),
            "P wins, against the paper's direction (N ahead)"
        );
        assert_eq!(
            verdict(&ci(-3.0, -1.0), -7.06, &d),
            "N wins, the paper's direction"
        );
        assert_eq!(
            verdict(&ci(-3.0, -1.0), 2.55, &d),
            "N wins, against the paper's direction (P ahead)"
        );
        assert!(verdict(&ci(-1.0, 1.0), 2.55, &d).starts_with("the interval includes 0"));
        // The paper's numbers as METHOD.md section 7 quotes them.
        assert!((PAPER_TABLE3.tma - PAPER_TABLE3.ma - PAPER_TABLE3.tma_minus_ma).abs() < 0.05);
        assert!((PAPER_TABLE3.tma - PAPER_TABLE3.mma - PAPER_TABLE3.tma_minus_mma).abs() < 0.05);
        assert_eq!(PAPER_TABLE5_D_MINUS_M, (2.55, -7.06));
        assert_eq!(PAPER_TABLE4_C10_MEAN, 1.4);
        // Table 6 against the composed modules (26.0): 27.2, 25.0, 24.0, 25.3.
        for ((_, d), top1) in PAPER_TABLE6_VS_COMPOSED
            .iter()
            .zip([27.2, 25.0, 24.0, 25.3])
        {
            assert!((top1 - 26.0 - d).abs() < 1e-9);
        }
    }
}
