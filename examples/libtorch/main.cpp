// Load a TorchScript file written by odeserve.export.to_torchscript and print the solution.
//
//   ./build/solve_ode model.pt [BATCH]
//
// The input batch is y0[i][j] = linspace(-1, 1, BATCH * D)[i * D + j] (D: the state width
// recorded in the file's metadata), the same batch examples/libtorch/export_model.py prints
// the eager odeserve solution for, so the two outputs can be compared line by line.
// Supports the common case of one state tensor of shape (batch, D); the artifact itself
// takes any batch size.
#include <torch/script.h>

#include <iomanip>
#include <iostream>
#include <regex>
#include <string>

namespace {

// One value of the odeserve.json metadata (a flat JSON object of strings).
std::string metadata_value(const std::string& json, const std::string& key) {
  const std::regex pattern("\"odeserve\\." + key + "\":\\s*\"([^\"]*)\"");
  std::smatch m;
  return std::regex_search(json, m, pattern) ? m[1].str() : std::string();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt [BATCH]\n";
    return 2;
  }
  const int64_t batch = argc > 2 ? std::stoll(argv[2]) : 4;

  torch::jit::ExtraFilesMap extra{{"odeserve.json", ""}};
  torch::jit::script::Module module;
  try {
    module = torch::jit::load(argv[1], torch::kCPU, extra);
  } catch (const c10::Error& e) {
    std::cerr << "cannot load " << argv[1] << ": " << e.what_without_backtrace() << "\n";
    return 1;
  }
  module.eval();
  const std::string& meta = extra["odeserve.json"];
  if (meta.empty()) {
    std::cerr << argv[1] << " has no odeserve.json: not written by odeserve.export.to_torchscript\n";
    return 1;
  }
  const std::string shapes = metadata_value(meta, "state_shapes");  // e.g. [[2]]
  std::smatch m;
  if (!std::regex_match(shapes, m, std::regex(R"(\[\[(\d+)\]\])"))) {
    std::cerr << "this example handles one state tensor of shape (batch, D); the file has " << shapes << "\n";
    return 1;
  }
  const int64_t width = std::stoll(m[1].str());
  const auto dtype = metadata_value(meta, "dtype") == "float64" ? torch::kFloat64 : torch::kFloat32;
  std::cout << "solver " << metadata_value(meta, "solver") << ", t in [" << metadata_value(meta, "t0") << ", "
            << metadata_value(meta, "t1") << "], dtype " << metadata_value(meta, "dtype") << ", parity error "
            << metadata_value(meta, "parity_error") << "\n";

  torch::NoGradGuard no_grad;
  const torch::Tensor y0 = torch::linspace(-1.0, 1.0, batch * width, torch::dtype(dtype)).reshape({batch, width});
  const auto outputs = module.forward({y0}).toTuple()->elements();
  const torch::Tensor y1 = outputs[0].toTensor();
  const torch::Tensor status = outputs[1].toTensor();

  std::cout << std::setprecision(8);
  for (int64_t i = 0; i < batch; ++i) {
    std::cout << "y1[" << i << "] =";
    for (int64_t j = 0; j < width; ++j) std::cout << " " << y1[i][j].item<double>();
    std::cout << "  status " << status[i].item<int64_t>() << "\n";
  }
  return 0;
}
