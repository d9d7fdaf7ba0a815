"""Face model: coefficient layout, camera, SH shading and morphable models (BFM09, procedural)."""

from talkinghead.face.camera import Camera, euler_to_rotation, pose_vertices, rotation_to_euler
from talkinghead.face.coeffs import (
    COEFF_DIM,
    EXP_DIM,
    ID_DIM,
    POSE_DIM,
    SH_DIM,
    SLICES,
    TEX_DIM,
    FaceCoeffs,
    join_coeffs,
    split_coeffs,
)
from talkinghead.face.shading import irradiance, sh_basis, shade
from talkinghead.face.morphable import FIVE_POINT_INDICES, FaceGeometry, MorphableModel, five_points
from talkinghead.face.procedural import EXPRESSION_UNITS, make_procedural_model
from talkinghead.face.bfm import convert_bfm09, load_face_model
