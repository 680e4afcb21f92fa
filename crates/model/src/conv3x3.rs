//! The network's 3×3 convolution (stride 1, zero padding 1) as a burn operation of its own, so that
//! training computes its weight gradient well.
//!
//! burn's autodiff computes a convolution's weight gradient as another convolution, of the input with
//! the output gradient as kernel: on CPUs a GEMM nine rows tall over copies of the input nine times
//! its size, a third of a training step. This operation keeps burn's forward pass, input gradient
//! and bias gradient, and replaces the weight gradient on the CPU backend with
//! [`auscult_inference::conv3x3_weight_grad`]: one GEMM per kernel position over the whole batch,
//! reading the input in place. Tensors on any other device (a GPU backend) take burn's `Conv2d`
//! unchanged; the parameters, and so the model file, are `Conv2d`'s either way.

use burn::backend::DispatchDevice;
use burn::backend::TensorMetadata;
use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::ConvOptions;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::{DType, Shape};

/// Stride 1, padding 1, no dilation, one group: the network's convolutions.
fn same() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

#[backend_extension(Flex, Autodiff)]
pub trait Conv3x3Backend: Backend {
    /// `conv2d(x, weight, bias)` with stride 1 and padding 1.
    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, Some(bias), same())
    }

    /// The gradient of [`Conv3x3Backend::conv3x3`] for `weight`.
    fn conv3x3_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, same())
    }
}

impl Conv3x3Backend for Flex {
    fn conv3x3_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (x, output_grad) = (x.to_contiguous(), output_grad.to_contiguous());
        let dims = |t: &FlexTensor| t.shape().dims::<4>();
        let ([batch, c_in, height, width], [_, c_out, _, _]) = (dims(&x), dims(&output_grad));
        match (x.as_slice::<f32>(), output_grad.as_slice::<f32>()) {
            (Some(input), Some(grad)) => {
                let dw = auscult_inference::conv3x3_weight_grad(
                    input,
                    grad,
                    auscult_inference::ConvShape {
                        batch,
                        c_in,
                        c_out,
                        height,
                        width,
                    },
                );
                FlexTensor::new(
                    burn::tensor::Bytes::from_elems(dw),
                    Layout::contiguous(Shape::new([c_out, c_in, 3, 3])),
                    DType::F32,
                )
            }
            // Another float type: burn's own gradient.
            _ => Self::conv2d_weight_backward(x, weight, output_grad, same()),
        }
    }
}

impl<B: Backend + Conv3x3Backend, C: CheckpointStrategy> Conv3x3Backend for Autodiff<B, C> {
    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv3x3Backward;

        impl<B: Backend + Conv3x3Backend> Backward<B, 3> for Conv3x3Backward {
            /// The forward pass's input, weight and bias.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let output_grad = grads.consume::<B>(&ops.node);
                let (x, weight, bias) = ops.state;
                if let Some(node) = node_bias {
                    grads.register::<B>(
                        node.id,
                        B::conv2d_bias_backward(x.clone(), bias, output_grad.clone()),
                    );
                }
                if let Some(node) = node_x {
                    grads.register::<B>(
                        node.id,
                        B::conv2d_x_backward(
                            x.clone(),
                            weight.clone(),
                            output_grad.clone(),
                            same(),
                        ),
                    );
                }
                if let Some(node) = node_weight {
                    grads.register::<B>(node.id, B::conv3x3_weight_grad(x, weight, output_grad));
                }
            }
        }

        match Conv3x3Backward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight, bias) = (
                    x.primitive().clone(),
                    weight.primitive().clone(),
                    bias.primitive().clone(),
                );
                let output = B::conv3x3(x.clone(), weight.clone(), bias.clone());
                prep.finish((x, weight, bias), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv3x3(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }
}

/// `conv`'s forward pass through [`Conv3x3Backend`]: the same values as `conv.forward(x)` for the
/// network's convolutions (3×3, stride 1, padding 1, with bias) on the CPU backend, and the faster
/// weight gradient. Anything else is `conv.forward(x)`.
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let network_shaped = conv.kernel_size == [3, 3]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Explicit(1, 1, 1, 1));
    let on_flex = matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_));
    let Some(bias) = conv.bias.as_ref().filter(|_| network_shaped && on_flex) else {
        return conv.forward(x);
    };
    Tensor::from_dispatch(<Dispatch as Conv3x3Backend>::conv3x3(
        x.into_dispatch(),
        conv.weight.val().into_dispatch(),
        bias.val().into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    use super::*;

    /// Gradients of `Σ conv(x) · r` for x, weight and bias, through `run`.
    fn gradients(
        conv: &Conv2d,
        x: &Tensor<4>,
        r: &Tensor<4>,
        run: impl Fn(&Conv2d, Tensor<4>) -> Tensor<4>,
    ) -> [Vec<f32>; 3] {
        let x = x.clone().require_grad();
        let loss = (run(conv, x.clone()) * r.clone()).sum();
        let grads = loss.backward();
        let values = |t: Option<Tensor<4>>| -> Vec<f32> {
            t.expect("gradient")
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        let bias = conv.bias.as_ref().expect("bias").val();
        [
            values(x.grad(&grads)),
            values(conv.weight.val().grad(&grads)),
            bias.grad(&grads)
                .expect("bias gradient")
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32"),
        ]
    }

    #[test]
    fn gradients_match_burns_convolution() {
        let device = Device::flex().autodiff();
        for (c_in, c_out, h, w, batch) in [(1, 8, 12, 16, 3), (8, 16, 6, 8, 2), (3, 4, 1, 5, 1)] {
            let conv = Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device);
            let x =
                Tensor::<4>::random([batch, c_in, h, w], Distribution::Normal(0.0, 1.0), &device);
            let r = Tensor::<4>::random(
                [batch, c_out, h, w],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let ours = gradients(&conv, &x, &r, forward);
            let burns = gradients(&conv, &x, &r, |conv, x| conv.forward(x));
            for (what, (a, b)) in ["x", "weight", "bias"].iter().zip(ours.iter().zip(&burns)) {
                let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-4 * scale,
                        "{what} [{i}] of ({c_in}, {c_out}, {h}, {w}): {u} vs {v}"
                    );
                }
            }
            // The forward pass is burn's own.
            let (ours, burns) = (forward(&conv, x.clone()), conv.forward(x));
            let difference: f32 = (ours - burns).abs().max().into_scalar();
            assert!(difference < 1e-5, "{difference}");
        }
    }
}
