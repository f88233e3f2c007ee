"""`grader synth`: a synthetic fruit image with known size and blemish area, or a conveyor clip."""

from __future__ import annotations

import argparse


def _synth(args: argparse.Namespace) -> int:
    import cv2

    if args.video:
        from datasets.video import make_conveyor_clip

        clip = make_conveyor_clip(args.out, lanes=args.lanes, seconds=args.seconds, mm_per_px=args.mm_per_px, seed=args.seed)
        print(
            f"{args.out}: {clip.n_frames} frames at {clip.fps:g} fps, {clip.lanes} lanes, belt {clip.speed_mm_s:g} mm/s, "
            f"{clip.mm_per_px:g} mm/px, {len(clip.fruits)} fruit:"
        )
        for f in clip.fruits:
            print(f"  lane {f.lane}  enters {f.enter_s:5.2f} s  {f.diameter_mm:5.1f} mm  blemish {f.blemish_area_cm2:.2f} cm²  {f.colour}")
        return 0

    from datasets.synthetic import make_fruit_image

    img, truth = make_fruit_image(
        seed=args.seed, diameter_mm=args.diameter_mm, mm_per_px=args.mm_per_px, colour=args.colour, blemishes_cm2=tuple(args.blemish_cm2)
    )
    cv2.imwrite(args.out, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    f = truth.fruits[0]
    print(
        f"{args.out}: one {args.colour} fruit, diameter {f.diameter_mm:g} mm at {args.mm_per_px:g} mm/px, "
        f"blemishes {f.blemish_area_cm2:.2f} cm² in total"
    )
    return 0


def add_synth(sub: argparse._SubParsersAction) -> None:
    y = sub.add_parser("synth", help="write a synthetic fruit image with known size and blemish area")
    y.add_argument("--out", default="fruit.jpg")
    y.add_argument("--diameter-mm", type=float, default=72.0)
    y.add_argument("--mm-per-px", type=float, default=0.3)
    y.add_argument("--colour", default="red", choices=["red", "green", "yellow", "orange", "lemon"])
    y.add_argument("--blemish-cm2", type=float, action="append", default=[], help="add a blemish of this area (repeatable)")
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--video", action="store_true", help="write a conveyor clip (AVI, MJPEG) of fruit riding a belt instead")
    y.add_argument("--seconds", type=float, default=30.0, help="--video: clip length")
    y.add_argument("--lanes", type=int, default=3, help="--video: belt lanes")
    y.set_defaults(func=_synth)
