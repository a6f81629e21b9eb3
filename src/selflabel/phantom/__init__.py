"""Procedural abdominal CT phantoms: a deterministic synthetic FLARE22-style cohort, no downloads.

Each case is a contrast-enhanced (or plain) abdominal CT built from simple shapes in millimetres and rasterised
organ by organ inside its bounding box:

* **Body**: a superellipse outline with random low-order wobble, skin (~40 HU), subcutaneous fat (-100 HU, thickness
  varying per patient and around the body), an abdominal muscle wall with a linea alba, paraspinal, quadratus and
  psoas muscles, lumbar/thoracic vertebrae (cortex ~800 HU, marrow ~230 HU, discs, canal, arches, spinous and
  transverse processes), sloping ribs with anterior costal cartilage, a diaphragm with lung bases and heart above
  it, and the CT table under the back. Air outside is -1000 HU.
* **FLARE22 organs** (labels 1-13) placed as in a supine adult: liver (right lobe under the right dome, left lobe
  across the midline, caudate by the IVC, hepatic and portal veins inside), right/left kidney (tilted, medial sinus,
  cortex/medulla), spleen (crescent on the left posterolateral wall), pancreas (head inside the duodenal C, neck,
  body across the aorta, tail to the splenic hilum in front of the left kidney), aorta (left-anterior of the spine),
  IVC (right of the aorta, intrahepatic above), adrenals (thin inverted-Y limbs above-medial of the upper poles,
  beside the diaphragmatic crura), gallbladder (pear under the liver), esophagus (top of the volume, in front of
  the aorta, to the gastro-oesophageal junction), stomach (J-shaped tube: fundus, body, antrum, pylorus) and
  duodenum (bulb, descending, horizontal and ascending parts around the pancreatic head).
* **Distractors** (label 0): colon with stool and gas, small-bowel loops, splenic/portal/superior mesenteric and renal
  veins, SMA and celiac arteries, crura, occasional liver cysts, gallstones, aortic calcifications, oral contrast.

Patients differ in body size and fat, organ sizes and positions, organ shapes (random low-order spherical-harmonic
radius perturbations and bends of every blob, jittered spline centre lines for tubes), contrast phase (non-contrast,
arterial, portal-venous, with a per-patient enhancement factor), image noise and blur, slice count, in-plane
spacing and slice thickness. Small organs are a few millimetres thick and close in HU to their neighbours
(pancreas vs duodenum/bowel, adrenals vs crura, esophagus vs muscle), so they stay hard with few labelled cases.

Arrays are in (x, y, z) voxel order with a RAS+ affine: x grows to the patient's right, y anteriorly, z superiorly
(slice 0 is the most inferior). Images are int16 HU, labels uint8 with FLARE22 indices
(`selflabel.labels.FLARE22_LABELS`). Every case is made from its own generator seeded from ``(seed, split, index)``,
so a case does not depend on how many others are made, and the same seed gives the same arrays.

Modules, in the order a case is made: `anatomy` (body measures, grid), `body` (wall, chest, spine, ribs, table),
`organs` (the abdominal contents, in label-priority order), `intensity` (HU, noise, blur), `case` (`make_case`),
`cohort` (`write_cohort`); `shapes`, `tissue` and `draws` are the tools they share.
"""

from __future__ import annotations

from selflabel.phantom.case import MIN_ORGAN_VOXELS, PhantomCase, make_case
from selflabel.phantom.cohort import PHANTOM_VERSION, SPLITS, CohortSummary, case_files, case_rng, write_cohort
from selflabel.phantom.intensity import PHASES
from selflabel.phantom.tissue import Tissue

__all__ = [
    "MIN_ORGAN_VOXELS",
    "PHANTOM_VERSION",
    "PHASES",
    "SPLITS",
    "CohortSummary",
    "PhantomCase",
    "Tissue",
    "case_files",
    "case_rng",
    "make_case",
    "write_cohort",
]
