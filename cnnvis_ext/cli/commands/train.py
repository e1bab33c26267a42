"""``cnnvis train``: train the example CNN, print its test accuracy, save a checkpoint."""
from __future__ import annotations

import torch

from ...data import load_dataset
from ...models import cifar_cnn
from ...report import plot_confusion, plot_curves, save_png
from ...train import TrainConfig, confusion_matrix, evaluate, predict, save_checkpoint, train
from ..errors import CLIError
from ..figures import out_dir
from ..jobs import say
from ..loading import resolve_device

HELP = "train the example CNN and save a checkpoint"
DESCRIPTION = ("Train cifar_cnn (CONV-RELU-POOL blocks + FC) on the bundled digits or --data DIR, "
               "print the test accuracy, save a checkpoint.")


def run(args) -> int:
    dev = resolve_device(args.device)
    torch.manual_seed(args.seed)
    data = load_dataset(args.data, size=args.input_size or 32, seed=0, progress=not args.quiet)
    kwargs = dict(num_classes=data.num_classes, in_channels=data.image_shape[0],
                  input_size=data.image_shape[-1], channels=tuple(args.channels),
                  kernel_size=args.kernel_size, hidden=args.hidden or None)
    try:
        model = cifar_cnn(**kwargs).to(dev)
    except ValueError as e:
        raise CLIError(str(e)) from None
    say(f"data: {data}")
    say(f"model: cifar_cnn(channels={list(args.channels)}), "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, on {dev}")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    hist = train(model, data, cfg, progress=not args.quiet, log=say)
    acc = evaluate(model, data.test_images, data.test_labels)
    ckpt = save_checkpoint(args.checkpoint, model, model_kwargs=kwargs, classes=data.classes,
                           history=hist, config=cfg, data=data.name, test_acc=acc)
    say(f"test accuracy: {acc:.2%} ({len(data.test_labels)} images)")
    say(f"wrote {ckpt}")
    if args.plots:
        out = out_dir(args)
        save_png(plot_curves({"train loss": hist["train_loss"]}, title="training loss"),
                 out / "training_loss.png")
        save_png(plot_curves({"train acc": hist["train_acc"], "test acc": hist["test_acc"]},
                             title="accuracy", ylim=(0, 1)), out / "training_accuracy.png")
        cm = confusion_matrix(predict(model, data.test_images), data.test_labels,
                              data.num_classes)
        save_png(plot_confusion(cm, data.classes), out / "confusion_matrix.png")
        say(f"wrote {out}/training_loss.png, training_accuracy.png, confusion_matrix.png")
    return 0
