"""Visualization loops: activation maximization, feature inversion, deconvnet
projections and top-k grids, attribution (saliency, guided backprop, deconvnet,
the CAM family, integrated gradients, occlusion, LRP), feature-map and kernel views, and image export.

Everything takes any ``nn.Module`` and names layers as ``model.named_modules()``
does; results are tensors on the model's device.
"""
from . import objectives, param, transforms
from .objectives import (OUTPUT, Objective, channel, class_logit, class_probability, direction,
                         diversity, neuron, parse_objective, weighted_sum)
from .param import FourierParam, GeneratorParam, ImageParam, PixelParam
from .actmax import (ActMaxResult, Regularizers, YOSINSKI_PRESETS, YosinskiPreset,
                     activation_maximization, yosinski_preset, maco_fv)
from .maco import (MacoParam, MacoResult, color_correlation, digits_spectrum, image_spectrum,
                   power_law_spectrum)
from .attribution import deconvnet_attribution, guided_backprop, saliency
from .cam import (ablation_cam, eigen_cam, grad_cam, grad_cam_pp, guided_grad_cam, hires_cam,
                  layer_cam, score_cam, xgrad_cam)
from .perturbation import IntegratedGradientsResult, integrated_gradients, occlusion
from .lrp import (FIRST_LAYER, PRESETS, AlphaBeta, Epsilon, Flat, Gamma, LRPResult, Rule, WSquare, ZBox,
                  lrp, preset as lrp_preset)
from .views import feature_maps, kernels, make_grid
from .inversion import InversionResult, invert
from .learned import UpConvInverter, invert_learned, train_inverter
from .deconvnet import deconvnet
from .top_activations import TopActivations, top_activations
from .accentuate import AccentuationResult, caricature, feature_accentuation, param_from_images
from .facets import FacetsResult, KMeansResult, kmeans, multifaceted_visualization
from .export import COLORMAPS, colormap, heatmap, overlay, save_image, to_uint8

__all__ = [
    "objectives", "param", "transforms",
    "OUTPUT", "Objective", "channel", "neuron", "class_logit", "class_probability", "direction",
    "diversity", "weighted_sum", "parse_objective",
    "ImageParam", "PixelParam", "FourierParam",
    "Regularizers", "YosinskiPreset", "YOSINSKI_PRESETS", "yosinski_preset", "ActMaxResult",
    "activation_maximization",
    "maco_fv", "MacoParam", "MacoResult", "image_spectrum", "power_law_spectrum", "digits_spectrum",
    "color_correlation",
    "saliency", "guided_backprop", "deconvnet_attribution", "grad_cam",
    "grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam", "score_cam", "ablation_cam", "eigen_cam",
    "guided_grad_cam", "integrated_gradients", "IntegratedGradientsResult", "occlusion",
    "lrp", "LRPResult", "Rule", "Epsilon", "Gamma", "AlphaBeta", "ZBox", "Flat", "WSquare",
    "FIRST_LAYER", "PRESETS", "lrp_preset",
    "invert", "InversionResult",
    "UpConvInverter", "train_inverter", "invert_learned", "GeneratorParam",
    "deconvnet", "top_activations", "TopActivations",
    "feature_maps", "kernels", "make_grid",
    "COLORMAPS", "colormap", "heatmap", "overlay", "save_image", "to_uint8",
    "feature_accentuation", "caricature", "AccentuationResult", "param_from_images",
    "multifaceted_visualization", "FacetsResult", "kmeans", "KMeansResult",
]
