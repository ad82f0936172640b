//! Which dataset, which split, and how pixels are normalized.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::DataError;

/// Environment variable naming the folder that contains the dataset folders.
pub const DATA_DIR_ENV: &str = "DECOMP_DATA_DIR";

/// Where the Debian package `dataset-fashion-mnist` installs the four `.gz` IDX files.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A dataset the crate can read in its official on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// CIFAR-10 binary version: 10 classes, 3x32x32.
    Cifar10,
    /// CIFAR-100 binary version: 100 fine classes, or the 20 coarse superclasses.
    Cifar100 {
        /// Use the coarse (superclass) label instead of the fine one.
        coarse: bool,
    },
    /// Tiny ImageNet (CS231N): 200 classes, 3x64x64 JPEG; the labelled `val` split is the test split.
    TinyImageNet,
    /// Fashion-MNIST (Zalando) in IDX format: 10 classes, 1x28x28.
    FashionMnist,
    /// MNIST in IDX format: 10 classes, 1x28x28.
    Mnist,
}

impl DatasetKind {
    /// Every kind, in the order of the names accepted by [`DatasetKind::parse`].
    pub const ALL: [DatasetKind; 6] = [
        DatasetKind::Cifar10,
        DatasetKind::Cifar100 { coarse: false },
        DatasetKind::Cifar100 { coarse: true },
        DatasetKind::TinyImageNet,
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
    ];

    /// The command-line name: `cifar10`, `cifar100`, `cifar100-coarse`, `tiny-imagenet`,
    /// `fashion-mnist`, `mnist` (also what [`fmt::Display`] prints).
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 { coarse: false } => "cifar100",
            DatasetKind::Cifar100 { coarse: true } => "cifar100-coarse",
            DatasetKind::TinyImageNet => "tiny-imagenet",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
        }
    }

    /// Parses a name printed by [`DatasetKind::name`]; case and `_` vs `-` do not matter.
    pub fn parse(name: &str) -> Result<Self, DataError> {
        let wanted = name.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL
            .into_iter()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| DataError::UnknownDataset {
                name: name.to_string(),
                known: Self::ALL.map(DatasetKind::name).join(", "),
            })
    }

    /// The folder the official archive unpacks to (the folder [`crate::Dataset::load`] looks
    /// for inside the data directory).
    pub fn folder_name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar-10-batches-bin",
            DatasetKind::Cifar100 { .. } => "cifar-100-binary",
            DatasetKind::TinyImageNet => "tiny-imagenet-200",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
        }
    }

    /// Number of classes of the official dataset.
    pub fn num_classes(self) -> usize {
        match self {
            DatasetKind::Cifar10 | DatasetKind::FashionMnist | DatasetKind::Mnist => 10,
            DatasetKind::Cifar100 { coarse: false } => 100,
            DatasetKind::Cifar100 { coarse: true } => 20,
            DatasetKind::TinyImageNet => 200,
        }
    }

    /// Native image shape `[channels, height, width]`.
    pub fn image_shape(self) -> [usize; 3] {
        match self {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 { .. } => [3, 32, 32],
            DatasetKind::TinyImageNet => [3, 64, 64],
            DatasetKind::FashionMnist | DatasetKind::Mnist => [1, 28, 28],
        }
    }

    /// The per-channel mean and standard deviation of the training set on `[0, 1]`, as
    /// published and used by the common training recipes.
    ///
    /// Sources:
    /// * CIFAR-10 `(0.4914, 0.4822, 0.4465)` / `(0.2470, 0.2435, 0.2616)`: statistics of the
    ///   50,000 training images (the values most CIFAR training scripts use; our own check on
    ///   `shared/datasets` gives the same means, see its README).
    /// * CIFAR-100 `(0.5071, 0.4865, 0.4409)` / `(0.2673, 0.2564, 0.2762)`: the 50,000
    ///   training images (values used by the common CIFAR-100 recipes, e.g. `weiaicunzai/pytorch-cifar100`).
    /// * Tiny ImageNet `(0.4802, 0.4481, 0.3975)` / `(0.2770, 0.2691, 0.2821)`: the 100,000
    ///   training images (values used by the common Tiny ImageNet loaders).
    /// * Fashion-MNIST `0.2860` / `0.3530`: the 60,000 training images (recomputed here from
    ///   the Debian package's files: 0.28604, 0.35302).
    /// * MNIST `0.1307` / `0.3081`: the 60,000 training images (the PyTorch MNIST example).
    pub fn default_normalization(self) -> Normalization {
        match self {
            DatasetKind::Cifar10 => {
                Normalization::new(&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616])
            }
            DatasetKind::Cifar100 { .. } => {
                Normalization::new(&[0.5071, 0.4865, 0.4409], &[0.2673, 0.2564, 0.2762])
            }
            DatasetKind::TinyImageNet => {
                Normalization::new(&[0.4802, 0.4481, 0.3975], &[0.2770, 0.2691, 0.2821])
            }
            DatasetKind::FashionMnist => Normalization::new(&[0.2860], &[0.3530]),
            DatasetKind::Mnist => Normalization::new(&[0.1307], &[0.3081]),
        }
    }

    /// The page that documents the dataset and links its official archive(s).
    pub fn homepage(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 { .. } => {
                "https://www.cs.toronto.edu/~kriz/cifar.html"
            }
            DatasetKind::TinyImageNet => "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
            DatasetKind::FashionMnist => "https://github.com/zalandoresearch/fashion-mnist",
            DatasetKind::Mnist => "http://yann.lecun.com/exdb/mnist/",
        }
    }

    /// The files (relative to the dataset folder) that hold `split`; a trailing `/` marks a
    /// folder. IDX files may also carry a `.gz` suffix.
    pub fn expected_files(self, split: Split) -> Vec<String> {
        let names: &[&str] = match (self, split) {
            (DatasetKind::Cifar10, Split::Train) => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (DatasetKind::Cifar10, Split::Test) => &["test_batch.bin"],
            (DatasetKind::Cifar100 { .. }, Split::Train) => &["train.bin"],
            (DatasetKind::Cifar100 { .. }, Split::Test) => &["test.bin"],
            (DatasetKind::TinyImageNet, Split::Train) => &["wnids.txt", "train/"],
            (DatasetKind::TinyImageNet, Split::Test) => {
                &["wnids.txt", "val/val_annotations.txt", "val/images/"]
            }
            (DatasetKind::FashionMnist | DatasetKind::Mnist, Split::Train) => {
                &["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
            }
            (DatasetKind::FashionMnist | DatasetKind::Mnist, Split::Test) => {
                &["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
            }
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The help text of a missing-dataset error: what is expected where, where to get it and
    /// how to point the tools at it. `folder` is the dataset folder that was searched.
    pub fn missing_help(self, folder: &Path) -> String {
        let layout = match self {
            DatasetKind::Cifar10 => {
                "data_batch_1.bin .. data_batch_5.bin (train), test_batch.bin (test), batches.meta.txt (class names); \
                 each file a sequence of 3073-byte records <label><1024 R><1024 G><1024 B>"
            }
            DatasetKind::Cifar100 { .. } => {
                "train.bin, test.bin, fine_label_names.txt, coarse_label_names.txt; \
                 each .bin a sequence of 3074-byte records <coarse label><fine label><3072 pixels>"
            }
            DatasetKind::TinyImageNet => {
                "wnids.txt, words.txt, train/<wnid>/images/*.JPEG (train), \
                 val/val_annotations.txt and val/images/*.JPEG (test)"
            }
            DatasetKind::FashionMnist | DatasetKind::Mnist => {
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, \
                 t10k-labels-idx1-ubyte (each optionally .gz)"
            }
        };
        let parent = folder.parent().unwrap_or(Path::new("."));
        let mut help = format!(
            "expected in {}: {layout}\n\
             get it from {} ",
            folder.display(),
            self.homepage()
        );
        help.push_str(match self {
            DatasetKind::Cifar10 => "(cifar-10-binary.tar.gz, unpacks to cifar-10-batches-bin/)",
            DatasetKind::Cifar100 { .. } => {
                "(cifar-100-binary.tar.gz, unpacks to cifar-100-binary/)"
            }
            DatasetKind::TinyImageNet => "(unpacks to tiny-imagenet-200/)",
            DatasetKind::FashionMnist => "(the four .gz files, into a folder named fashion-mnist/)",
            DatasetKind::Mnist => {
                "(the four .gz files, also at https://ossci-datasets.s3.amazonaws.com/mnist/, into a folder named mnist/)"
            },
        });
        if self == DatasetKind::FashionMnist {
            help.push_str(&format!(
                ", or install the Debian package: apt-get install dataset-fashion-mnist \
                 (puts the files in {DEBIAN_FASHION_MNIST_DIR}, so use --data-dir /usr/share/datasets)"
            ));
        }
        // Whether a download applies (and where it goes) is for the caller to say: the
        // resolution in `locate` adds it; a folder named with --dataset-path gets none.
        help.push_str(&format!(
            "\nuse --data-dir DIR or {DATA_DIR_ENV}=DIR to name the folder that contains {}/ \
             (now {})",
            self.folder_name(),
            parent.display()
        ));
        help
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split.
    Train,
    /// The test split; for Tiny ImageNet the labelled `val` split (its `test` split has no labels).
    Test,
}

impl Split {
    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = DataError;

    /// `train`, `test`, or `val` (= [`Split::Test`]); case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" | "val" => Ok(Split::Test),
            _ => Err(DataError::UnknownSplit {
                name: s.to_string(),
            }),
        }
    }
}

/// Per-channel normalization applied when decoding a batch: `x = (pixel / 255 - mean) / std`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    /// One mean per channel, on `[0, 1]`.
    pub mean: Vec<f32>,
    /// One standard deviation per channel, on `[0, 1]`.
    pub std: Vec<f32>,
}

impl Normalization {
    /// A normalization from per-channel means and standard deviations.
    pub fn new(mean: &[f32], std: &[f32]) -> Self {
        Normalization {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// No normalization beyond scaling to `[0, 1]` (mean 0, std 1) for `channels` channels.
    pub fn unit(channels: usize) -> Self {
        Normalization {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// The ImageNet statistics `(0.485, 0.456, 0.406)` / `(0.229, 0.224, 0.225)`, which the
    /// akamaster CIFAR-10 ResNets were trained with.
    pub fn imagenet() -> Self {
        Normalization::new(&[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225])
    }

    /// Number of channels described.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Checks that there is one finite mean and one positive finite std per channel.
    pub fn validate(&self, channels: usize) -> Result<(), DataError> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(DataError::InvalidArgument(format!(
                "normalization has {} means and {} stds, expected {channels} of each (one per channel)",
                self.mean.len(),
                self.std.len()
            )));
        }
        if let Some(bad) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(DataError::InvalidArgument(format!(
                "normalization mean {bad} is not finite, expected a finite value"
            )));
        }
        if let Some(bad) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(DataError::InvalidArgument(format!(
                "normalization std {bad} is not positive, expected a finite value above 0"
            )));
        }
        Ok(())
    }

    /// Per-channel lookup tables from pixel value to normalized value.
    pub(crate) fn tables(&self) -> Vec<[f32; 256]> {
        self.mean
            .iter()
            .zip(&self.std)
            .map(|(&m, &s)| std::array::from_fn(|p| (p as f32 / 255.0 - m) / s))
            .collect()
    }

    /// The normalization after converting images from `from` to `to` channels: 1 -> 3
    /// replicates the single entry; 3 -> 1 takes the luminance-weighted (ITU-R BT.601) mean
    /// and std, an approximation (set exact statistics with `with_normalization` if needed).
    pub(crate) fn convert_channels(&self, from: usize, to: usize) -> Normalization {
        match (from, to, self.channels()) {
            (1, 3, 1) => Normalization {
                mean: vec![self.mean[0]; 3],
                std: vec![self.std[0]; 3],
            },
            (3, 1, 3) => {
                let lum = |v: &[f32]| LUMA[0] * v[0] + LUMA[1] * v[1] + LUMA[2] * v[2];
                Normalization {
                    mean: vec![lum(&self.mean)],
                    std: vec![lum(&self.std)],
                }
            }
            _ => self.clone(),
        }
    }
}

/// ITU-R BT.601 luma weights (what PIL's `convert("L")` uses).
pub(crate) const LUMA: [f32; 3] = [0.299, 0.587, 0.114];
