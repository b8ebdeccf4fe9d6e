"""Pretext tasks: LightningModules that share `VSSLTask`, one file per task."""

from vssl.tasks.avid import AVID
from vssl.tasks.base import StepOutput, VSSLTask
from vssl.tasks.clip_order import ClipOrder
from vssl.tasks.cvrl import CVRL
from vssl.tasks.distillation import Distillation
from vssl.tasks.mixture import TaskMixture
from vssl.tasks.playback_rate import PlaybackRate
from vssl.tasks.rho_byol import RhoBYOL
from vssl.tasks.rho_moco import RhoMoCo
from vssl.tasks.rotation import Rotation
from vssl.tasks.rspnet import RSPNet
from vssl.tasks.siammae import SiamMAE
from vssl.tasks.statistics import SpatioTemporalStatistics
from vssl.tasks.supervised import Supervised
from vssl.tasks.tdl import TDL
from vssl.tasks.vatt import VATT
from vssl.tasks.videomae import VideoMAE
from vssl.tasks.vjepa import VJEPA

__all__ = [
    "AVID",
    "CVRL",
    "ClipOrder",
    "Distillation",
    "PlaybackRate",
    "RSPNet",
    "RhoBYOL",
    "RhoMoCo",
    "Rotation",
    "SiamMAE",
    "SpatioTemporalStatistics",
    "StepOutput",
    "Supervised",
    "TDL",
    "TaskMixture",
    "VATT",
    "VJEPA",
    "VSSLTask",
    "VideoMAE",
]
