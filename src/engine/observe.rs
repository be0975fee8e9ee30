//! A hook on the inputs of the model's matrix products, for statistics over
//! real activations (`qforge imatrix`). Nothing is observed unless a
//! caller installs an observer ([`super::Model::set_observer`]).

use super::source::Role;

/// Sees the input of every matrix product of the decoder layers, and of
/// the output matrix, just before the product.
pub trait MatmulObserver: Send + Sync {
    /// `input` holds `rows` rows (one per token of the batch) of the
    /// matrix's input, row-major: `input.len() / rows` is the matrix's
    /// column count. `layer` is 0 for the output matrix, whose role is
    /// [`Role::Output`] (the token embedding when the model ties them).
    fn observe(&self, layer: usize, role: Role, rows: usize, input: &[f32]);
}
