def some_other_function(event, context):
    return "not the handler"
