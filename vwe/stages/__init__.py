"""The pipeline's stages, one module each (IRNet's `step/`), in the order `vwe run` runs them."""
from vwe.stages import (data, eval_cam, eval_seg, infer_seg, make_cam, make_pseudo, make_sem_seg, report, train_cam,
                        train_irn, train_seg)
from vwe.stages.stage import Stage

STAGES: list[Stage] = [data.STAGE, train_cam.STAGE, make_cam.STAGE, eval_cam.STAGE, make_pseudo.STAGE, train_irn.STAGE,
                       make_sem_seg.STAGE, train_seg.STAGE, infer_seg.STAGE, eval_seg.STAGE, report.STAGE]
STAGE_NAMES = [stage.name for stage in STAGES]


def stages_of(cfg) -> list[Stage]:
    """The stages this config runs, in order (IRNet's two only with pseudo.method = irnet)."""
    return [stage for stage in STAGES if stage.used(cfg)]
