// treegate/treegate.hpp — umbrella header: everything a user of the layers needs.
// Include the individual headers instead to keep compile times down.
#ifndef TREEGATE_TREEGATE_HPP
#define TREEGATE_TREEGATE_HPP

#include "activation.hpp"
#include "config.hpp"
#include "error.hpp"
#include "kernels/policy.hpp"
#include "layers/activation_layer.hpp"
#include "layers/dense.hpp"
#include "layers/flatten.hpp"
#include "layers/sequential.hpp"
#include "layers/tree_feedforward.hpp"
#include "layers/tree_linear.hpp"
#include "layers/tree_linear_bf16.hpp"
#include "layers/sliced_tree_linear.hpp"
#include "parallel/executor.hpp"
#include "parallel/thread_pool.hpp"
#include "routing.hpp"
#include "schedule.hpp"
#include "tree.hpp"
#include "workspace.hpp"

#endif
