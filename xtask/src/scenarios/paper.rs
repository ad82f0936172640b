//! The paper's published numbers that more than one scenario prints.

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
