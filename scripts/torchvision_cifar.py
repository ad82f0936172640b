#!/usr/bin/env python3
"""torchvision's VGG-11-BN and MobileNetV2 adapted to 32x32 inputs, as export_onnx.py trains and
exports them (its ADAPTATION note) and bench_frameworks.py times them in PyTorch. Needs PyTorch
and torchvision."""


def vgg11_bn_32(num_classes, hidden, width_div):
    import torch.nn as nn
    import torchvision
    from torchvision.models.vgg import cfgs, make_layers

    if width_div == 1:
        model = torchvision.models.vgg11_bn(num_classes=num_classes)
    else:
        cfg = [v if v == "M" else v // width_div for v in cfgs["A"]]
        model = torchvision.models.vgg.VGG(make_layers(cfg, batch_norm=True), num_classes=num_classes)
    last = [v for v in cfgs["A"] if v != "M"][-1] // width_div
    model.avgpool = nn.Identity()
    model.classifier = nn.Sequential(
        nn.Linear(last, hidden), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(hidden, num_classes))
    return model


def mobilenet_v2_32(num_classes, width_mult):
    import torchvision

    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],  # torchvision: stride 2
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    model = torchvision.models.mobilenet_v2(
        num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=setting)
    model.features[0][0].stride = (1, 1)  # torchvision: stride 2
    return model
