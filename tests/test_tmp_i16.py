from test_faults import (test_a_stop_signal_during_the_final_test_exits_75_and_the_rerun_only_tests,  # noqa
                         test_ctrl_c_saves_latest_and_exits_130_without_a_traceback, test_a_second_ctrl_c_stops_at_once_with_status_130)
from test_faults import test_flag_values_that_used_to_get_through_are_refused_naming_the_flag  # noqa
from test_faults import test_a_checkpoint_of_another_model_size_is_refused_before_data_and_model  # noqa
