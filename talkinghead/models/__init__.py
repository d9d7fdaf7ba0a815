"""Networks: Stage 1 (audio -> expression and pose) and Stage 2 (refinement GAN)."""

from talkinghead.models.audio2coeff import ExpressionPoseLSTM, make_optimizer, predict_sequence, stage1_loss
