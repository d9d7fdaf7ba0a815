"""Networks: Stage 1 (audio -> expression and pose) and Stage 2 (refinement GAN)."""

from talkinghead.models.audio2coeff import ExpressionPoseLSTM, make_optimizer, predict_sequence, stage1_loss
from talkinghead.models.features import CoeffIdentityFeature, make_identity_feature, make_key_encoder
from talkinghead.models.memory import IdentityMemory, interpolate_identity
from talkinghead.models.refiner import (
    MemoryAugmentedGenerator,
    PatchDiscriminator,
    UNetAdaINGenerator,
    discriminator_loss,
    generator_loss,
)
