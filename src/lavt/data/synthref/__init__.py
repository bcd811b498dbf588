"""synthref: a generated referring-segmentation dataset in the refer-API layout.

No RefCOCO images can be fetched where this project runs, so tests and the embedded
default run use scenes drawn here. Each image holds 2-6 coloured shapes on a textured
background; each object gets several expressions that single it out:

- attribute: colour, shape and size ("the red circle", "the big blue shape", "the
  larger star");
- position: the extreme object of a class ("the leftmost square", "the red shape at the
  top", "the lower ring" when there are two rings);
- relation: an ambiguous class plus a unique anchor ("the star left of the green ring",
  "the circle closest to the small cross").

Every expression is checked against the scene by `resolve` (one interpreter of the
expression meaning) and kept only when it picks out exactly its object, with clear
margins for positions and relations. Scenes draw their shapes and colours from small
per-scene pools, so most images hold several objects sharing a colour or a shape and
the image alone cannot tell which one an expression means.

Appearance: muted textured backgrounds (noise, blotches, stripes, checks, gradients),
jittered and shaded object colours, small rotations, pixel noise, JPEG compression, and
occasional partial occlusion (the annotation is then the visible part, stored as RLE;
other objects are stored as polygons; rings are two overlapping half-rings, so the
official `== 1` mask mode drops their overlap, as it does on real data). Sizes are two
classes, small and large, at least 1.5x apart.

Splits, by image (like RefCOCO): train, val, testA, testB. As RefCOCO's testA refers only
to people and testB only to other objects, synthref's testA refers only to the round
shapes (circle, ring, star) and testB only to the angular ones (square, triangle,
cross); their images hold at least two objects of that group, and the other shapes stay
in the scene as context and anchors. train and val refer to every object.

The same seed gives byte-identical annotation files (and images): each image draws from
its own RNG seeded by (seed, image index).

Modules: `scenes` (objects, geometry, masks, background, placement), `language` (what an
expression means and how it is worded), `writer` (`generate`: splits and the refer files).
`aerial` and `aerial_scenes` write `synthrs` instead, top-down aerial scenes in the RRSIS-D
layout (`lavt data synth --style aerial`); they share nothing with synthref's files.
"""
from lavt.data.synthref.language import KINDS, Spec, resolve
from lavt.data.synthref.scenes import COLOURS, GROUP_A, GROUP_B, SHAPES, SIZES, SceneObject, sample_scene
from lavt.data.synthref.writer import DATASET, SPLIT_BY, SPLITS, SynthSummary, generate

__all__ = ["COLOURS", "DATASET", "GROUP_A", "GROUP_B", "KINDS", "SHAPES", "SIZES", "SPLITS", "SPLIT_BY",
           "SceneObject", "Spec", "SynthSummary", "generate", "resolve", "sample_scene"]
