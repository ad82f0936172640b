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
