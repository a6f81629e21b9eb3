"""Tissue classes of the phantom and their CT numbers: mean HU per contrast phase and texture amplitude."""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """Tissue classes of the phantom; each has a mean HU per contrast phase and a texture amplitude."""

    AIR = 0
    FAT = 1
    SKIN = 2
    MUSCLE = 3
    BONE_CORTEX = 4
    BONE_MARROW = 5
    DISC = 6
    CSF = 7
    RIB = 8
    CARTILAGE = 9
    LUNG = 10
    HEART = 11
    LIVER = 12
    HEPATIC_VEIN = 13
    PORTAL_VEIN = 14
    SPLEEN = 15
    KIDNEY_CORTEX = 16
    KIDNEY_MEDULLA = 17
    PANCREAS = 18
    ARTERY = 19
    IVC = 20
    ADRENAL = 21
    BILE = 22
    GB_WALL = 23
    BOWEL_WALL = 24
    FLUID = 25
    FOOD = 26
    STOOL = 27
    GAS = 28
    ORAL_CONTRAST = 29
    CALCIFICATION = 30
    TABLE = 31
    FOAM = 32
    ESOPHAGUS = 33
    CYST = 34


#: Mean HU per tissue: (non-contrast, arterial, portal-venous); texture amplitude (HU, low-frequency).
HU: dict[Tissue, tuple[float, float, float, float]] = {
    Tissue.AIR: (-1000, -1000, -1000, 0),
    Tissue.FAT: (-105, -105, -105, 12),
    Tissue.SKIN: (35, 40, 45, 5),
    Tissue.MUSCLE: (45, 55, 60, 7),
    Tissue.BONE_CORTEX: (800, 800, 800, 80),
    Tissue.BONE_MARROW: (230, 235, 240, 45),
    Tissue.DISC: (85, 90, 95, 8),
    Tissue.CSF: (12, 12, 12, 3),
    Tissue.RIB: (520, 520, 520, 80),
    Tissue.CARTILAGE: (130, 130, 130, 25),
    Tissue.LUNG: (-850, -850, -850, 40),
    Tissue.HEART: (42, 180, 140, 10),
    Tissue.LIVER: (58, 75, 112, 6),
    Tissue.HEPATIC_VEIN: (40, 60, 155, 4),
    Tissue.PORTAL_VEIN: (40, 140, 170, 4),
    Tissue.SPLEEN: (48, 120, 118, 6),
    Tissue.KIDNEY_CORTEX: (32, 185, 165, 6),
    Tissue.KIDNEY_MEDULLA: (30, 80, 150, 6),
    Tissue.PANCREAS: (42, 115, 95, 14),
    Tissue.ARTERY: (42, 300, 165, 4),
    Tissue.IVC: (42, 85, 150, 5),
    Tissue.ADRENAL: (25, 62, 56, 6),
    Tissue.BILE: (10, 10, 10, 3),
    Tissue.GB_WALL: (40, 70, 75, 4),
    Tissue.BOWEL_WALL: (42, 95, 88, 8),
    Tissue.FLUID: (12, 12, 12, 6),
    Tissue.FOOD: (40, 40, 40, 35),
    Tissue.STOOL: (25, 25, 25, 70),
    Tissue.GAS: (-1000, -1000, -1000, 0),
    Tissue.ORAL_CONTRAST: (320, 320, 320, 40),
    Tissue.CALCIFICATION: (750, 750, 750, 100),
    Tissue.TABLE: (250, 250, 250, 20),
    Tissue.FOAM: (-850, -850, -850, 20),
    Tissue.ESOPHAGUS: (45, 65, 75, 6),
    Tissue.CYST: (8, 8, 8, 3),
}
#: Tissues whose HU does not rise with the contrast agent (the others are scaled by the patient's enhancement).
NO_ENHANCEMENT = {Tissue.AIR, Tissue.GAS, Tissue.FAT, Tissue.LUNG, Tissue.BONE_CORTEX, Tissue.RIB, Tissue.FOAM}
