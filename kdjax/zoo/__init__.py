"""Reference Flax models used by the experiments."""

from kdjax.zoo._cifar import CIFAR_MODELS
from kdjax.zoo._cifar import cifar_model
from kdjax.zoo._conv import Conv
from kdjax.zoo._conv import conv2d
from kdjax.zoo._conv import cpu_conv_compiler_options
from kdjax.zoo._features import expose_feature
from kdjax.zoo._mobilenetv2 import MobileNetV2
from kdjax.zoo._mobilenetv2 import mobile_half
from kdjax.zoo._resnet_cifar import CifarResNet
from kdjax.zoo._resnet_cifar import resnet110
from kdjax.zoo._resnet_cifar import resnet20
from kdjax.zoo._resnet_cifar import resnet32
from kdjax.zoo._resnet_cifar import resnet32x4
from kdjax.zoo._resnet_cifar import resnet56
from kdjax.zoo._resnet_cifar import resnet8x4
from kdjax.zoo._shufflenet import ShuffleNetV1
from kdjax.zoo._shufflenet import ShuffleNetV2
from kdjax.zoo._shufflenet import shuffle_v1
from kdjax.zoo._shufflenet import shuffle_v2
from kdjax.zoo._vgg import CifarVGG
from kdjax.zoo._vgg import vgg13
from kdjax.zoo._vgg import vgg8
from kdjax.zoo._wrn import WideResNet
from kdjax.zoo._wrn import wrn_16_1
from kdjax.zoo._wrn import wrn_16_2
from kdjax.zoo._wrn import wrn_40_1
from kdjax.zoo._wrn import wrn_40_2
from kdjax.zoo._cnn1d import Conv1D
from kdjax.zoo._cnn1d import ConvNet1D
from kdjax.zoo._mlp import MLP
from kdjax.zoo._transformer import DecoderConfig
from kdjax.zoo._transformer import DecoderLM
from kdjax.zoo._transformer import TRANSFORMER_LOGICAL_AXES
from kdjax.zoo._transformer import lm_apply
from kdjax.zoo._transformer import lm_decoder
from kdjax.zoo._seq2seq import Seq2SeqConfig
from kdjax.zoo._seq2seq import Seq2SeqTransformer
from kdjax.zoo._seq2seq import param_count  # DecoderConfig or Seq2SeqConfig
from kdjax.zoo._seq2seq import seq2seq_apply
from kdjax.zoo._seq2seq import seq2seq_decoder

__all__ = ['Conv1D', 'ConvNet1D', 'MLP',
           'DecoderConfig', 'DecoderLM', 'TRANSFORMER_LOGICAL_AXES', 'lm_apply', 'lm_decoder',
           'param_count', 'Seq2SeqConfig', 'Seq2SeqTransformer', 'seq2seq_apply',
           'seq2seq_decoder']
__all__ += ['CIFAR_MODELS', 'cifar_model', 'Conv', 'conv2d', 'expose_feature',
            'CifarResNet', 'WideResNet', 'CifarVGG', 'MobileNetV2', 'ShuffleNetV1',
            'ShuffleNetV2', 'resnet20', 'resnet32', 'resnet56', 'resnet110',
            'resnet8x4', 'resnet32x4', 'wrn_16_1', 'wrn_16_2', 'wrn_40_1', 'wrn_40_2',
            'vgg8', 'vgg13', 'mobile_half', 'shuffle_v1', 'shuffle_v2']
from kdjax.zoo._bert import BERT_FEATURE_KINDS
from kdjax.zoo._bert import BERT_LOGICAL_AXES
from kdjax.zoo._bert import BertCheckpoint
from kdjax.zoo._bert import BertConfig
from kdjax.zoo._bert import BertEncoder
from kdjax.zoo._bert import bert_apply
from kdjax.zoo._bert import bert_feature_names
from kdjax.zoo._bert import bert_params_from_hf
from kdjax.zoo._bert import bert_params_to_hf
from kdjax.zoo._bert import bert_student_from_teacher
from kdjax.zoo._bert import load_bert
from kdjax.zoo._bert import mean_pool
from kdjax.zoo._bert import sentence_embedding

__all__ += ['BERT_FEATURE_KINDS', 'BERT_LOGICAL_AXES', 'BertCheckpoint', 'BertConfig',
            'BertEncoder', 'bert_apply', 'bert_feature_names', 'bert_params_from_hf',
            'bert_params_to_hf', 'bert_student_from_teacher', 'load_bert', 'mean_pool',
            'sentence_embedding']
from kdjax.zoo._fastspeech import FastSpeech
from kdjax.zoo._fastspeech import FastSpeechConfig
from kdjax.zoo._tts import SpeechGeneration
from kdjax.zoo._tts import TTS_LOGICAL_AXES
from kdjax.zoo._tts import TransformerTTS
from kdjax.zoo._tts import TransformerTTSConfig
from kdjax.zoo._fastspeech import VariancePredictor
from kdjax.zoo._tts import extract_durations
from kdjax.zoo._fastspeech import fastspeech_apply
from kdjax.zoo._tts import focus_rate
from kdjax.zoo._fastspeech import frame_phoneme_index
from kdjax.zoo._fastspeech import length_regulate
from kdjax.zoo._tts import make_tts_generate
from kdjax.zoo._tts import monotonic_alignment
from kdjax.zoo._fastspeech import phoneme_average
from kdjax.zoo._fastspeech import predicted_durations
from kdjax.zoo._fastspeech import quantize
from kdjax.zoo._tts import shift_frames_right
from kdjax.zoo._tts import transformer_tts_apply
from kdjax.zoo._fastspeech import variance_bins

__all__ += ['FastSpeech', 'FastSpeechConfig', 'SpeechGeneration', 'TTS_LOGICAL_AXES',
            'TransformerTTS', 'TransformerTTSConfig', 'VariancePredictor', 'extract_durations',
            'fastspeech_apply', 'focus_rate', 'frame_phoneme_index', 'length_regulate',
            'make_tts_generate', 'monotonic_alignment', 'phoneme_average', 'predicted_durations', 'quantize',
            'shift_frames_right', 'transformer_tts_apply', 'variance_bins']
