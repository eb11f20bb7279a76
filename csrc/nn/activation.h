/* nn/activation.h: the MLP activations a model config names (public: the encoders'
 * configs carry one). */
#ifndef MP_NN_ACTIVATION_H
#define MP_NN_ACTIVATION_H

// gelu: the erf form (torch's default); quick_gelu: x * sigmoid(1.702 x) (OpenAI CLIP).
enum mp_activation { MP_ACTIVATION_GELU = 0, MP_ACTIVATION_QUICK_GELU };

#endif
