//! Import of the current PyTorch serialization (a zip of `data.pkl` + raw storages), on a
//! checkpoint written here by a minimal pickle emitter that mirrors `torch.save`.

use decomp_model::ResNetConfig;
use decomp_model::import::{StateDict, akamaster_norm, import_resnet};

use crate::torch_zip::write_zip_checkpoint;

#[test]
fn zip_checkpoint_imports_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (cfg, prefix) in [
        (ResNetConfig::new(8, 10).with_seed(11), "module."),
        (
            ResNetConfig::new(14, 5)
                .with_seed(12)
                .with_batch_norm(false),
            "",
        ),
    ] {
        let original = cfg.build().expect("build");
        let path = dir.path().join("model.pt");
        write_zip_checkpoint(&path, &original, prefix);
        // Detected from the tensor names, and checked against an explicit architecture.
        let detected = StateDict::read(&path)
            .expect("read zip")
            .detect_resnet()
            .expect("resnet");
        assert_eq!(
            (detected.depth, detected.num_classes, detected.batch_norm),
            (cfg.depth, cfg.num_classes, cfg.batch_norm)
        );
        let imported = import_resnet(&path, Some(&cfg), akamaster_norm(), None).expect("import");
        assert_eq!(imported.graph, original.graph, "{cfg:?}");
    }
}
