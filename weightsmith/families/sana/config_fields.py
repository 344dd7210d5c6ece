"""The __init__ parameters of this family's diffusers classes: (annotation, default), as
diffusers 0.42.1 declares them. Written by `python -m weightsmith.families.config_fields_writer`
(see weightsmith/families/config_fields.py); do not edit by hand."""

from weightsmith.families.config_fields import ConfigFields

CONFIG_FIELDS = ConfigFields(
    diffusers="0.42.1",
    classes={
        "AutoencoderDC": {
            "in_channels": (int, 3),
            "latent_channels": (int, 32),
            "attention_head_dim": (int, 32),
            "encoder_block_types": (str | tuple[str], "ResBlock"),
            "decoder_block_types": (str | tuple[str], "ResBlock"),
            "encoder_block_out_channels": (tuple[int, ...], (128, 256, 512, 512, 1024, 1024)),
            "decoder_block_out_channels": (tuple[int, ...], (128, 256, 512, 512, 1024, 1024)),
            "encoder_layers_per_block": (tuple[int, ...], (2, 2, 2, 3, 3, 3)),
            "decoder_layers_per_block": (tuple[int, ...], (3, 3, 3, 3, 3, 3)),
            "encoder_qkv_multiscales": (tuple[tuple[int, ...], ...], ((), (), (), (5,), (5,), (5,))),
            "decoder_qkv_multiscales": (tuple[tuple[int, ...], ...], ((), (), (), (5,), (5,), (5,))),
            "upsample_block_type": (str, "pixel_shuffle"),
            "downsample_block_type": (str, "pixel_unshuffle"),
            "decoder_norm_types": (str | tuple[str], "rms_norm"),
            "decoder_act_fns": (str | tuple[str], "silu"),
            "encoder_out_shortcut": (bool, True),
            "decoder_in_shortcut": (bool, True),
            "decoder_conv_act_fn": (str, "relu"),
            "scaling_factor": (float, 1.0),
        },
        "SanaTransformer2DModel": {
            "in_channels": (int, 32),
            "out_channels": (int | None, 32),
            "num_attention_heads": (int, 70),
            "attention_head_dim": (int, 32),
            "num_layers": (int, 20),
            "num_cross_attention_heads": (int | None, 20),
            "cross_attention_head_dim": (int | None, 112),
            "cross_attention_dim": (int | None, 2240),
            "caption_channels": (int, 2304),
            "mlp_ratio": (float, 2.5),
            "dropout": (float, 0.0),
            "attention_bias": (bool, False),
            "sample_size": (int, 32),
            "patch_size": (int, 1),
            "norm_elementwise_affine": (bool, False),
            "norm_eps": (float, 1e-06),
            "interpolation_scale": (int | None, None),
            "guidance_embeds": (bool, False),
            "guidance_embeds_scale": (float, 0.1),
            "qk_norm": (str | None, None),
            "timestep_scale": (float, 1.0),
        },
    },
)
